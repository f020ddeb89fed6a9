"""`sd2tflite bench`: measurement helpers, the cases, one worker process per case, the report
(JSON schema, Markdown table) and the plot. LiteRT cases import no TensorFlow."""
