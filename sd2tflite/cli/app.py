"""The sd2tflite command line: parse options, make one library call, print the result.

Imports no TensorFlow at module level, so `sd2tflite --help` is instant.
"""

from __future__ import annotations

import os
import shlex
import sys

import click

from .. import __version__
from ..convert.quiet import quiet_tensorflow
from ..core.registry import PREDICTION_TYPES
from .options import (TqdmProgress, handle_errors, parse_bytes, require_converter, thread_list, threads_option,
                      verbosity, vocab_option, weight_cache_option)


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="sd2tflite")
def main() -> None:
    """Convert KerasCV Stable Diffusion to TFLite (LiteRT) files with a manifest."""


@main.command()
@click.option("--model", "family", default="v1", show_default=True,
              help="Model family: v1 (SD 1.4), v2 (SD 2.1) or tiny (small widths, for tests).")
@click.option("--quant", default="fp32", show_default=True,
              help="Precision: fp32, fp16, dynamic (int8 weights), int8 (calibrated, float fallback), "
                   "int8-strict (integer-only) or int16x8 (int16 activations).")
@click.option("--weights", multiple=True,
              help="hub | DIR (keras-cv's Hub file names) | COMPONENT=PATH,... (.h5) | random[:SEED] | a PyTorch "
                   "checkpoint: FILE.safetensors, a diffusers folder or hf://OWNER/REPO[@REV], repeatable with "
                   "unet=PATH, vae=PATH, text_encoder=PATH overrides | trained (tiny: the package's weights, trained on "
                   "shapes captions). Default: hub for v1/v2, trained for tiny.")
@click.option("--lora", "loras", multiple=True, metavar="FILE[:SCALE]",
              help="Checkpoints: merge a LoRA (kohya / A1111 or diffusers / PEFT .safetensors) into the UNet and "
                   "text encoder before converting; repeatable; scale 1 by default.")
@click.option("--prediction-type", default=None, type=click.Choice(PREDICTION_TYPES),
              help="Checkpoints: what the UNet predicts (default: the diffusers scheduler config; SD 1.x "
                   "epsilon; SD 2.x single files must say: 512-base epsilon, 768-v v_prediction).")
@click.option("--ema/--no-ema", default=True, show_default=True,
              help="Checkpoints: use the EMA UNet weights of a single file that carries them.")
@click.option("--components", default="all", show_default=True,
              help="Comma-separated: text_encoder,diffusion,decoder,image_encoder.")
@click.option("--batch-size", default=1, show_default=True, type=int)
@click.option("--img-height", default=None, type=int, help="Default: the model's size (512; 128 for tiny).")
@click.option("--img-width", default=None, type=int, help="Default: the model's size (512; 128 for tiny).")
@click.option("--max-part-bytes", default=None, callback=parse_bytes,
              help="Largest UNet part file (default 1400MiB: plain flatbuffers, under 2 GiB).")
@click.option("--unet-parts", default=None, type=int, help="Split the UNet into at least N parts.")
@click.option("--join-unet/--no-join-unet", default=None,
              help="Deliver the UNet as one file after converting it in parts (default: when the parts "
                   "were cut only to fit --memory-budget and one file fits --max-part-bytes).")
@click.option("--memory-budget", default=None, callback=parse_bytes,
              help="RAM one conversion worker may use (e.g. 8GB); splits the UNet to fit. "
                   "Default: 80% of this machine's RAM (a one-part quantized v1 UNet needs ~17 GB).")
@click.option("-o", "--output", "out_dir", default=None,
              help="Output directory (default models/sd-MODEL-QUANT).")
@click.option("--force", is_flag=True, help="Rebuild every file; write into a non-empty directory.")
@click.option("--dry-run", is_flag=True, help="Print the plan (parts, params, bytes, crossing tensors) only.")
@click.option("--isolate/--no-isolate", default=None,
              help="Convert each part in its own process (default: on for v1/v2, off for tiny).")
@click.option("--calibration", default="recorded", show_default=True,
              type=click.Choice(["recorded", "synthetic"]),
              help="int8: record real inputs from Keras pipeline runs (cached), or seeded synthetic ones.")
@click.option("--calibration-prompts", default=None, type=click.Path(dir_okay=False),
              help="int8: prompt file, one per line (default: the built-in varied set).")
@click.option("--calibration-prompt-count", default=8, show_default=True, type=int,
              help="int8: how many prompts to run.")
@click.option("--calibration-steps", default=10, show_default=True, type=int,
              help="int8: pipeline steps per prompt (UNet inputs over the whole schedule, both branches).")
@click.option("--calibration-samples", default=32, show_default=True, type=int,
              help="int8: representative samples kept per component.")
@click.option("--calibration-images", default=None, type=click.Path(file_okay=False),
              help="int8: images for the image encoder (default: the decoded pipeline outputs).")
@click.option("--keep-float", default=None,
              help="int8: keep more operators in float (attention's BATCH_MATMUL and SOFTMAX always are: LiteRT "
                   "has no fast int8 kernel for them): op types (MEAN), tensor-name globs (*attention*), "
                   "and/or auto[:SNR_DB] (a search for the operator types that can be quantized while the "
                   "part keeps that SNR on held-out samples; default 20).")
@click.option("--seed", default=0, show_default=True, type=click.IntRange(min=0), help="int8: calibration data seed.")
@click.option("--export-cache", default=None, type=click.Path(file_okay=False),
              help="Keep the exported SavedModels in this folder and reuse them when the same model is "
                   "converted to another precision (skips the export; ~4 bytes of disk per parameter).")
@click.option("--default-sampler", default=None,
              help="The set's generate default sampler (default: the checkpoint's scheduler config, e.g. pndm "
                   "for SD 1.5; keras-cv's ddim for keras-cv weights).")
@click.option("--default-steps", default=None, type=int,
              help="The set's generate default steps, e.g. 1 for SD-Turbo (default 25; 4 for lcm / tcd).")
@click.option("--default-guidance", default=None, type=float,
              help="The set's generate default guidance, e.g. 0 for SD-Turbo (default 7.5).")
@click.option("--default-spacing", default=None, type=click.Choice(["leading", "trailing", "linspace"]),
              help="The set's timestep spacing (default: the scheduler config's, else the sampler's own).")
@click.option("--default-eta", default=None, type=float, help="The set's tcd gamma (default 0.3).")
@click.option("--attention-heads", multiple=True, metavar="COMPONENT=N[,N...]|COMPONENT=CONFIG.json",
              help="Checkpoints without a config.json (single files): the attention head counts, which the weights "
                   "cannot say (default: SD 1.x UNet 8 per level, SD 2.x head dim 64; text encoder head dim 64); "
                   "unet=8, unet=5,10,20,20, text_encoder=12, or a diffusers / transformers config.json; repeatable.")
@click.option("--pad-token", default=None, type=click.Choice(["eos", "!"]),
              help="What prompts are padded with (default: the checkpoint's tokenizer config; SD 1.x eos, "
                   "SD 2.x '!'; keras-cv weights eos).")
@verbosity
@handle_errors
def convert(dry_run, verbose, quiet, max_part_bytes, weights, loras, **options):
    """Convert the Stable Diffusion components to .tflite files plus manifest.json."""
    require_converter("sd2tflite convert")
    quiet_tensorflow(verbose)
    from ..convert.orchestrate import convert as run_convert
    from ..convert.limits import DEFAULT_MAX_PART_BYTES
    from ..convert.plan import describe_plan, plan_conversion
    from ..convert.request import ConvertOptions, build_request

    request = build_request(ConvertOptions(
        **options, weights=",".join(weights) or None, loras=tuple(loras), max_part_bytes=DEFAULT_MAX_PART_BYTES if max_part_bytes is None else max_part_bytes,
        command=shlex.join(["sd2tflite", *sys.argv[1:]])), resolve_weights=not dry_run)
    if dry_run:  # the plan a run would make (convert plans once, the same way), printed
        click.echo(describe_plan(plan_conversion(request)))
        _heads_notes(request)
        return
    with TqdmProgress(quiet, TqdmProgress.COMPACT) as progress:
        result = run_convert(request, progress)
    for a in result.manifest.artifacts:
        state = "reused" if a.path in result.reused else f"{a.conversion_seconds:7.1f} s"
        click.echo(f"{a.path:28s} {a.bytes / 2**20:10,.1f} MiB  {a.params:>13,} params  {state}")
    for note in result.notes:
        click.echo(f"note: {note}", err=True)
    _heads_notes(request)
    click.echo(f"manifest: {result.manifest_path}")


def _heads_notes(request) -> None:
    """A checkpoint whose attention head counts were assumed (no config.json says them): one line."""
    from ..convert.checkpoint.architecture import heads_note

    for note in dict.fromkeys(filter(None, (heads_note(w.identity or {}) for w in request.weights.values()))):
        click.echo(f"note: {note}", err=True)


@main.command()
@click.argument("model_dir")
@click.argument("prompt")
@click.option("-o", "--output", default="out.png", show_default=True, type=click.Path(dir_okay=False),
              help="PNG to write (a batch writes out.png, out-1.png, ...).")
@click.option("--steps", default=None, type=int,
              help="Denoising steps (default: the set's recommendation, else 25; 4 for lcm / tcd).")
@click.option("--guidance", default=None, type=float,
              help="Classifier-free guidance scale; <= 1 runs the conditional UNet call alone (default: the "
                   "set's recommendation, else 7.5).")
@click.option("--seed", default=0, show_default=True, type=click.IntRange(min=0),
              help="Seed of the starting noise (and of the noise stochastic samplers add between steps).")
@click.option("--negative-prompt", default=None, help="What to steer away from (default: the empty prompt).")
@click.option("--noise", "noise_file", default=None, type=click.Path(dir_okay=False),
              help="Starting latent noise (.npy) instead of the seed: reproduce another implementation's run.")
@click.option("--image", "image_file", default=None, type=click.Path(dir_okay=False),
              help="Input image: image-to-image, or inpainting with --mask.")
@click.option("--mask", "mask_file", default=None, type=click.Path(dir_okay=False),
              help="Inpainting mask, the size of --image: white is repainted, black kept.")
@click.option("--strength", default=None, type=float,
              help="With --image: how much of the schedule to run (0-1; default 1.0).")
@click.option("--resize/--no-resize", default=True, show_default=True,
              help="Resize an --image of another size to the set's size (else refuse).")
@click.option("--sampler", default=None,
              help="ddim, pndm, euler, euler-a, dpm++2m, lcm, tcd (diffusers' schedulers) or ddim-kerascv "
                   "(keras-cv's, bit for bit; what ddim is on keras-cv sets). Default: the model's own "
                   "scheduler as the manifest records it (keras-cv sets: ddim).")
@click.option("--karras", is_flag=True, help="Karras sigmas (euler, euler-a, dpm++2m).")
@click.option("--spacing", default=None, type=click.Choice(["leading", "trailing", "linspace"]),
              help="Timestep spacing (default: the model's scheduler config, else the sampler's own).")
@click.option("--eta", default=None, type=float, help="tcd's gamma (default 0.3); ddim's eta (default 0).")
@click.option("--save-latents", default=None, type=click.Path(dir_okay=False),
              help="Also write the final latents (.npy).")
@click.option("--vae", default="full", show_default=True, type=click.Choice(["full", "tiny"]),
              help="tiny: decode (and encode, if converted) with the set's TAESD files (--components taesd_decoder).")
@vocab_option()
@threads_option
@weight_cache_option
@click.option("--force", is_flag=True, help="Overwrite existing output files.")
@verbosity
@handle_errors
def generate(model_dir, prompt, output, steps, guidance, seed, negative_prompt, noise_file, image_file,
             mask_file, strength, resize, sampler, karras, spacing, eta, save_latents, vae, vocab, threads,
             weight_cache, force, verbose, quiet):
    """Text-to-image, image-to-image and inpainting from a converted set, on LiteRT only."""
    from pathlib import Path

    from ..core.quiet import QUIET_ENV

    if quiet:
        os.environ[QUIET_ENV] = "1"  # LiteRT's native start-up line too

    from ..runtime.generate import GenerateRequest
    from ..runtime.generate import generate as run_generate
    from ..runtime.pipeline import GenerateSettings

    opt = lambda p: Path(p) if p else None  # noqa: E731
    settings = GenerateSettings(prompt, steps=steps, guidance=guidance, seed=seed, negative_prompt=negative_prompt,
                                strength=strength, sampler=sampler, karras=karras, spacing=spacing,
                                eta=eta)  # checked before any download
    request = GenerateRequest(
        model_dir=model_dir, output=Path(output), settings=settings,
        noise_file=opt(noise_file), image_file=opt(image_file), mask_file=opt(mask_file),
        resize=resize, threads=threads, vocab=opt(vocab), save_latents=opt(save_latents), force=force,
        weight_cache=weight_cache, vae=vae,
    )
    with TqdmProgress(quiet) as progress:
        result = run_generate(request, progress)
    for note in result.notes:
        click.echo(f"note: {note}", err=True)
    for path in result.paths:
        click.echo(str(path))
    if save_latents:
        click.echo(str(save_latents))


@main.command()
@click.argument("model_dir")
@click.option("--weights", default=None,
              help="Reference weights (same forms as convert). Default: the ones the manifest records.")
@click.option("--steps", default=None, type=int,
              help="End-to-end diffusion steps (default: 3; 25 for the int8 modes, whose error only a finished "
                   "picture shows).")
@click.option("--end-to-end/--no-end-to-end", default=True, show_default=True,
              help="Also compare whole images against keras-cv's pipeline.")
@click.option("--json", "json_path", default=None, type=click.Path(dir_okay=False),
              help="Also write the report as JSON (MODEL_DIR/verify.json is what push-hub's card shows).")
@vocab_option()
@threads_option
@click.option("--accelerators", default="npu,gpu", show_default=True,
              help="Whose placement to measure per file (information, never a failed check): npu (LiteRT's AOT "
                   "compiler, needs the npu extra), gpu (LiteRT.js WebGPU in headless Chromium), or none.")
@click.option("--npu-target", default="qualcomm:SM8650", show_default=True, metavar="VENDOR:SOC",
              help="The SoC the NPU placement is asked of.")
@click.option("--force", is_flag=True, help="Overwrite existing --json files.")
@verbosity
@handle_errors
def verify(model_dir, weights, steps, end_to_end, json_path, vocab, threads, accelerators, npu_target, force, verbose,
           quiet):
    """Check a set: integrity, each component against Keras, and whole images against keras-cv.

    Exit code 0 when every check passes, 1 when any fails, 2 for usage errors.
    """
    from pathlib import Path

    require_converter("sd2tflite verify (it compares the files with the Keras model)")
    quiet_tensorflow(verbose)
    from ..verify.run import VerifyRequest
    from ..verify.run import verify as run_verify

    request = VerifyRequest(
        model_dir, weights=weights, vocab=Path(vocab) if vocab else None, steps=steps, end_to_end=end_to_end,
        threads=threads, json_path=Path(json_path) if json_path else None, force=force, npu_target=npu_target,
        accelerators=tuple(a.strip().lower() for a in accelerators.split(",") if a.strip() and a.strip() != "none"))
    with TqdmProgress(quiet) as progress:
        report = run_verify(request, progress)
    click.echo(report.table())
    if json_path:
        click.echo(f"report: {json_path}")
    sys.exit(0 if report.passed else 1)


@main.command()
@click.argument("model_dirs", nargs=-1, required=True)
@click.option("--threads", default=None, callback=thread_list,
              help="Comma-separated thread counts, one case each (default: all cores).")
@click.option("--repeats", default=10, show_default=True, type=int, help="Timed calls per component.")
@click.option("--warmup", default=1, show_default=True, type=int, help="Untimed calls after the first.")
@click.option("--steps", default=3, show_default=True, type=int, help="Diffusion steps per image.")
@click.option("--image-repeats", default=1, show_default=True, type=int, help="Timed images (after a first one).")
@click.option("--compare", multiple=True, help="Also time 'keras': keras-cv's jit_compile off and on.")
@click.option("--seed", default=0, show_default=True, type=click.IntRange(min=0), help="Seed of the inputs and the noise.")
@click.option("--json", "json_path", default=None, type=click.Path(dir_okay=False), help="Write the report (JSON).")
@click.option("--plot", "plot_path", default=None, type=click.Path(dir_okay=False),
              help="Draw latency and size bars (PNG; needs the 'plot' extra: matplotlib).")
@vocab_option("CLIP vocabulary (bpe_simple_vocab_16e6.txt.gz). Default: the cached or downloaded "
             "one, else a generated one (timings do not depend on token ids).")
@weight_cache_option
@click.option("--force", is_flag=True, help="Overwrite existing --json / --plot files.")
@verbosity
@handle_errors
def bench(model_dirs, threads, repeats, warmup, steps, image_repeats, compare, seed, json_path, plot_path,
          vocab, weight_cache, force, verbose, quiet):
    """Latency, peak RSS and file sizes of converted sets, per UNet part, component, step and image.

    Several MODEL_DIRS are measured side by side; each case runs in its own process.
    """
    from ..core.quiet import QUIET_ENV

    if quiet:
        os.environ[QUIET_ENV] = "1"  # the cases' processes inherit it
    from pathlib import Path

    from ..bench.cases import BenchRequest
    from ..bench.cases import bench as run_bench

    if compare:
        require_converter("sd2tflite bench --compare keras")
    opt = lambda p: Path(p) if p else None  # noqa: E731
    request = BenchRequest(
        model_dirs=model_dirs, threads=threads, repeats=repeats, warmup=warmup, steps=steps,
        image_repeats=image_repeats, compare=tuple(compare), seed=seed, vocab=opt(vocab), weight_cache=weight_cache,
        json_path=opt(json_path), plot_path=opt(plot_path), force=force)
    with TqdmProgress(quiet) as progress:
        report = run_bench(request, progress)
    click.echo(report.table())
    if json_path:
        click.echo(f"report: {json_path}")
    if plot_path:
        click.echo(f"plot: {plot_path}")
    for failure in report.failures:
        click.echo(f"error: the {failure['backend']} case of {failure['directory']} (threads={failure['threads']}) "
                   f"failed and is not in the table: {failure['error']}", err=True)
    if report.failures:
        sys.exit(1)


@main.command("compile")
@click.argument("model_dir", type=click.Path(file_okay=False))
@click.option("--target", "targets", required=True, multiple=True, metavar="VENDOR:SOC[,SOC...]",
              help="NPU targets, e.g. qualcomm:SM8650,SM8750 (also mediatek:MT6989, google_tensor:Tensor_G4); "
                   "repeatable.")
@click.option("--opt-level", default="O3", show_default=True, type=click.Choice(["O1", "O2", "O3"]),
              help="Qualcomm optimisation level: O3 makes the fastest code (pixel-space files take minutes), "
                   "O2 compiles fastest.")
@click.option("--components", default="all", show_default=True,
              help="Comma-separated: text_encoder,diffusion,decoder,image_encoder.")
@click.option("--json", "json_path", default=None, type=click.Path(dir_okay=False),
              help="Also write the per-file report (NPU ops, partitions, rejected ops and reasons) as JSON.")
@click.option("--force", is_flag=True, help="Compile again files whose compiled copy is up to date.")
@verbosity
@handle_errors
def compile_(model_dir, targets, opt_level, components, json_path, force, verbose, quiet):
    """Compile a set's files ahead of time for phone NPUs (LiteRT AOT), into MODEL_DIR/npu/.

    The set's own files stay as they are (runnable on the CPU); the manifest records each compiled
    file. Exit code 0 when every file compiled, 1 when any failed (the others are kept), 2 for
    usage errors.
    """
    from pathlib import Path

    from ..device.compile import CompileRequest, compile_set
    from ..device.targets import parse_targets

    parsed = tuple(t for text in targets for t in parse_targets(text))
    request = CompileRequest(Path(model_dir), tuple(dict.fromkeys(parsed)), opt_level,
                             components=None if components == "all" else tuple(c.strip() for c in components.split(",")),
                             force=force, json_path=Path(json_path) if json_path else None)
    with TqdmProgress(quiet) as progress:
        result = compile_set(request, progress)
    click.echo("\n".join(result.lines()))
    if json_path:
        click.echo(f"report: {json_path}")
    if result.failed:
        click.echo(f"error: {result.failure_message()}", err=True)
        sys.exit(1)


@main.command("push-hub")
@click.argument("directory", type=click.Path(file_okay=False))
@click.option("--repo-id", required=True, help="OWNER/NAME on the Hub; created if missing.")
@click.option("--private", is_flag=True, help="Create the repo private (refuses an existing public one).")
@click.option("--revision", default="main", show_default=True, help="Branch to commit to (created if missing).")
@click.option("--commit-message", default=None, help="Commit summary (default: family, precision, file count).")
@click.option("--create-pr", is_flag=True, help="Open a pull request instead of committing to the branch.")
@click.option("--token", default=None,
              help="Hub token with write access (default: HF_TOKEN, then `hf auth login`). Never printed.")
@click.option("--verify-report", default=None, type=click.Path(dir_okay=False),
              help="`sd2tflite verify --json` output for the card (default: DIRECTORY/verify.json if present).")
@click.option("--dry-run", is_flag=True, help="Print the model card and the operations; no network.")
@verbosity
@handle_errors
def push_hub(directory, repo_id, private, revision, commit_message, create_pr, token, verify_report, dry_run,
             verbose, quiet):
    """Publish a converted set (files, manifest, model card) to the Hugging Face Hub in one commit."""
    from ..publish import push as hub

    if not dry_run and not verbose:
        from huggingface_hub.utils import disable_progress_bars, logging as hf_logging

        hf_logging.set_verbosity_error()  # its retry warnings would break the one-line errors
        if quiet:
            disable_progress_bars()
    request = hub.PushRequest(directory, repo_id, token=token, private=private, revision=revision,
                              commit_message=commit_message, create_pr=create_pr, verify_report=verify_report,
                              dry_run=dry_run)
    with TqdmProgress(quiet) as progress:
        result = hub.push(request, progress)
    if dry_run:
        click.echo(result.plan.card)
        click.echo("# dry run: nothing was sent; the push would:")
        click.echo(result.plan.describe())
        return
    click.echo(result.url)


@main.command()
@click.argument("model_dir")
@click.option("--host", default="127.0.0.1", show_default=True,
              help="Address to listen on (127.0.0.1: this machine only).")
@click.option("--port", default=8765, show_default=True, type=click.IntRange(0, 65535), help="Port (0: a free one).")
@click.option("--open", "open_browser", is_flag=True, help="Open the page in the default browser.")
@click.option("--litertjs", default=None, type=click.Path(file_okay=False),
              help="Folder holding node_modules/@litertjs (default: $SD2TFLITE_LITERTJS or sd2tflite's cache; "
                   "see docs/browser.md).")
@click.option("--noise", "noise_file", default=None, type=click.Path(dir_okay=False),
              help="Starting latent noise (.npy) for every run, as generate --noise.")
@vocab_option()
@verbosity
@handle_errors
def serve(model_dir, host, port, open_browser, litertjs, noise_file, vocab, verbose, quiet):
    """Generate in the browser: a local page running the set on LiteRT.js (WebGPU, else wasm)."""
    from pathlib import Path

    from ..serve.app import ServeRequest, make_server

    opt = lambda p: Path(p) if p else None  # noqa: E731
    server = make_server(ServeRequest(model_dir, host=host, port=port, litertjs=litertjs,
                                      noise_file=opt(noise_file), vocab=opt(vocab)))
    click.echo(f"serving {model_dir} at {server.url} (Ctrl+C stops)")
    if open_browser:
        import webbrowser

        webbrowser.open(server.url)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.close()


if __name__ == "__main__":
    main()
