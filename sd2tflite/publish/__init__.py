"""`sd2tflite push-hub`: the model card and the push to the Hugging Face Hub. No TensorFlow."""
