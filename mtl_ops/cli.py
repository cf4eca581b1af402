"""The `mtl-ops` command: `info` (build and backends), `bench` (speed and memory ratio table), `train`,
`eval`, `predict`, `demo` (train and compare every method on the embedded synthetic scenes) and `study` (every
method with several seeds at a larger budget)."""
from __future__ import annotations

import argparse
import json
import shlex
import sys
from pathlib import Path

import torch

_DTYPES = {"float32": torch.float32, "fp32": torch.float32, "bfloat16": torch.bfloat16, "bf16": torch.bfloat16,
           "float16": torch.float16, "fp16": torch.float16, "float64": torch.float64}


def _cmd_info(args) -> int:
    from .info import collect, format_report

    report = collect()
    print(json.dumps(report, indent=2, default=str) if args.json else format_report(report))
    return 0


def _cmd_bench(args) -> int:
    from .bench import CASES, format_table, run_benchmarks

    if args.networks:
        return _bench_networks(args)
    unknown = [op for op in args.ops if op not in CASES]
    if unknown:
        print(f"mtl-ops bench: unknown op(s) {unknown}; benchmarked ops: {', '.join(CASES)}", file=sys.stderr)
        return 2
    dtypes = []
    for name in args.dtype:
        if name not in _DTYPES:
            print(f"mtl-ops bench: --dtype must be one of {sorted(_DTYPES)}, got {name!r}", file=sys.stderr)
            return 2
        dtypes.append(_DTYPES[name])
    device = torch.device(args.device) if args.device else None
    if device is not None and device.type == "cuda" and not torch.cuda.is_available():
        print("mtl-ops bench: --device cuda but no CUDA device is available", file=sys.stderr)
        return 2
    timing = dict(min_repeats=2, min_seconds=0.0, warmup=1) if args.quick else dict(min_seconds=args.min_seconds)
    if args.once:
        timing = dict(min_repeats=1, min_seconds=0.0, warmup=1)
    size = "quick" if args.quick else args.size
    rows = run_benchmarks(args.ops or None, device, dtypes, size, on_row=_jsonl_writer(args.jsonl),
                          only=tuple(args.providers) if args.providers else None, measure_memory=not args.once,
                          **timing)
    print(format_table(rows))
    for op in dict.fromkeys(r["op"] for r in rows):
        if CASES[op].target and not args.quick:
            print(f"target ({op}): {CASES[op].target}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(rows, f, indent=2)
        print(f"wrote {len(rows)} rows to {args.json}")
    return 0


def _bench_networks(args) -> int:
    from .bench.networks import format_network_table, network_rows
    from .train.methods import available_methods

    unknown = [m for m in args.ops if m not in available_methods()]
    if unknown:
        print(f"mtl-ops bench --networks: unknown method(s) {unknown}; methods: {', '.join(available_methods())}",
              file=sys.stderr)
        return 2
    device = torch.device(args.device) if args.device else None
    if device is not None and device.type == "cuda" and not torch.cuda.is_available():
        print("mtl-ops bench: --device cuda but no CUDA device is available", file=sys.stderr)
        return 2
    timing = dict(min_repeats=2, min_seconds=0.0, warmup=1) if args.quick else dict(min_repeats=5, min_seconds=0.3)
    if args.once:
        timing = dict(min_repeats=1, min_seconds=0.0, warmup=1)
    rows = []
    for name in args.dtype:
        if name not in _DTYPES:
            print(f"mtl-ops bench: --dtype must be one of {sorted(_DTYPES)}, got {name!r}", file=sys.stderr)
            return 2
        rows += network_rows(args.ops or None, device, _DTYPES[name], "quick" if args.quick else "full",
                             only=tuple(args.providers) if args.providers else None,
                             on_row=_jsonl_writer(args.jsonl), **timing)
    print(format_network_table(rows))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(rows, f, indent=2)
    return 0


def _jsonl_writer(path):
    """on_row callback appending each row to ``path`` as a JSON line (None without a path)."""
    if not path:
        return None

    def on_row(row):
        with open(path, "a") as f:
            f.write(json.dumps(row) + "\n")
    return on_row


def _given_options(args) -> dict:
    """The TrainConfig fields the user gave: those named in the --config file, then the flags."""
    from .train import TrainConfig

    data = {}
    if getattr(args, "preset", None):
        from .train.presets import preset_values

        data = preset_values(args.preset)
    if getattr(args, "config", None):
        from_file = TrainConfig.from_json(args.config).to_dict()  # validated, normalised
        data.update({k: from_file[k] for k in json.loads(Path(args.config).read_text())})
    for name in ("method", "tasks", "dataset", "data_root", "size", "n_train", "n_val", "backbone", "width", "epochs",
                 "pretrained", "batch_size", "lr", "weighting", "device", "seed", "num_workers", "num_threads",
                 "out_dir", "cache_dir",
                 "max_steps_per_epoch", "scale_crop", "crop_scales", "weight_decay", "optimizer", "momentum",
                 "nesterov", "betas", "eps", "grad_clip", "lr_schedule", "lr_interval", "lr_power", "lr_min",
                 "lr_step_size", "lr_milestones", "lr_gamma", "warmup", "warmup_start_factor", "best_metric",
                 "dwa_temperature", "aux_weight"):
        value = getattr(args, name, None)
        if value is not None:
            data[name] = list(value) if isinstance(value, list) else value
    if getattr(args, "baseline_metrics", None):
        data["baseline_metrics"] = _read_baseline(args.baseline_metrics)
    for name in ("method_options", "schedule_options", "loss_weights", "aggregator_options"):
        value = getattr(args, name, None)
        if value is not None:
            try:
                data[name] = json.loads(value)
            except json.JSONDecodeError as e:
                raise ValueError(f"--{name.replace('_', '-')}: not valid JSON ({e})") from None
    if getattr(args, "pretrained_download", False):
        data["pretrained"] = True
    if getattr(args, "amp", False):
        data["amp"] = True
    if getattr(args, "no_augment", False):
        data["augment"] = False
    if getattr(args, "quiet", False):
        data["quiet"] = True
    if getattr(args, "skip_nonfinite", False):
        data["skip_nonfinite"] = True
    return data


def _read_baseline(path) -> dict:
    """The metrics ``{task: {metric: value}}`` in the JSON file ``path``: as written by ``mtl-ops eval --json``
    (its ``val``) or the metrics object alone."""
    try:
        data = json.loads(Path(path).read_text())
    except FileNotFoundError:
        raise FileNotFoundError(f"--baseline-metrics: no file at {path}") from None
    except json.JSONDecodeError as e:
        raise ValueError(f"--baseline-metrics: {path} is not valid JSON ({e})") from None
    if isinstance(data, dict) and isinstance(data.get("val"), dict):
        data = data["val"]
    if not isinstance(data, dict):
        raise ValueError(f"--baseline-metrics: expected {{task: {{metric: value}}}} (or mtl-ops eval --json output) "
                         f"in {path}, got {type(data).__name__}")
    return data


def _train_config(args):
    from .train import TrainConfig

    return TrainConfig.from_dict(_given_options(args))


def _fail(command: str, error: Exception) -> int:
    print(f"mtl-ops {command}: error: {error}", file=sys.stderr)
    return 2


def _cmd_train(args) -> int:
    from .train import Trainer

    try:
        if args.resume:  # the run's configuration comes from the checkpoint; the flags may change only some fields
            trainer = Trainer.from_checkpoint(args.resume, overwrite=args.overwrite, **_given_options(args))
        else:
            trainer = Trainer(_train_config(args), overwrite=args.overwrite)
        metrics = trainer.fit()  # schedules check their options before training (clear errors, no traceback)
    except (ValueError, FileNotFoundError) as e:
        return _fail("train", e)
    except FloatingPointError as e:  # a non-finite loss or model: the run stopped, its last checkpoint is intact
        print(f"mtl-ops train: stopped: {e}", file=sys.stderr)
        return 1
    if trainer.dist.is_main:
        print(json.dumps({"method": trainer.config.method, "learnable_parameters": trainer.learnable_parameters(),
                          "val": metrics}, indent=2))
    return 0


def _cmd_eval(args) -> int:
    from .train import Trainer
    from .train.inference import load_trained

    try:
        model, config, _ = load_trained(args.checkpoint)
        overrides = {k: v for k, v in (("data_root", args.data_root), ("cache_dir", args.cache_dir)) if v}
        # the weights come from the checkpoint: the pretrained file is not read again
        config = type(config).from_dict({**config.to_dict(), **overrides, "out_dir": None, "quiet": True,
                                         "pretrained": None})
        trainer = Trainer(config)
    except (ValueError, FileNotFoundError) as e:
        return _fail("eval", e)
    trainer.wrapper.load_state_dict(model.state_dict())
    if hasattr(trainer.net, "set_mode") and hasattr(model.net, "mode"):
        trainer.net.set_mode(model.net.mode)
    metrics = trainer.evaluate()
    text = json.dumps({"method": config.method, "val": metrics}, indent=2)
    print(text)
    if args.json:
        with open(args.json, "w") as f:
            f.write(text)
    return 0


def _cmd_predict(args) -> int:
    from pathlib import Path

    from .train.inference import load_trained, prediction_images, write_predictions
    from .utils.images import read_image, to_unit_rgb

    path = Path(args.image)
    try:
        array = to_unit_rgb(read_image(path, "IMAGE"), "IMAGE")  # bad pixels are refused before the model runs
        model, config, state = load_trained(args.checkpoint)
    except (ValueError, FileNotFoundError, ImportError) as e:
        return _fail("predict", e)
    image = torch.from_numpy(array).permute(2, 0, 1)[None].contiguous()
    if args.size:
        image = torch.nn.functional.interpolate(image, size=tuple(args.size), mode="bilinear", align_corners=False)
    with torch.no_grad():
        preds = model(image)
    images = prediction_images(preds, 0, state["num_classes"])
    for written in write_predictions(Path(args.out_dir), path.stem, images):
        print(f"wrote {written}")
    if "attributes" in preds:
        present = (torch.sigmoid(preds["attributes"][0]) > 0.5).nonzero().flatten().tolist()
        print(f"attributes (classes present): {present}")
    return 0


def _demo_config(args, defaults):
    """The demo's or the study's TrainConfig: ``defaults`` (the demo's data and budget), then the flags given."""
    from .models.backbones import is_builtin
    from .train import TrainConfig

    if args.backbone is not None and not is_builtin(args.backbone) and args.width is None:
        defaults = {k: v for k, v in defaults.items() if k != "width"}  # the built-in ResNets' width only
    return TrainConfig(**{**defaults, **{k: v for k, v in (
        ("n_train", args.n_train), ("n_val", args.n_val), ("epochs", args.epochs), ("width", args.width),
        ("size", tuple(args.size) if args.size else None), ("backbone", args.backbone),
        ("tasks", tuple(args.tasks) if args.tasks else None), ("seed", getattr(args, "seed", None)),
        ("cache_dir", args.cache_dir), ("batch_size", args.batch_size),
        ("num_threads", args.num_threads)) if v is not None}})


def _cmd_demo(args) -> int:
    from .train.demo import DEMO_DEFAULTS, run_demo

    try:
        results = run_demo(args.out_dir, methods=args.methods, base=_demo_config(args, DEMO_DEFAULTS),
                           quiet=args.quiet, timing_steps=args.timing_steps)
    except (ValueError, FileNotFoundError) as e:
        return _fail("demo", e)
    print(f"demo finished in {results['wall_seconds']:.0f} s; report: {args.out_dir}/report.md")
    return 0


class _HelpFormatter(argparse.RawDescriptionHelpFormatter):
    """Keeps the epilog's line breaks and appends "(default: X)" to an option's help when the option has a
    default and its help does not state one already."""

    def _get_help_string(self, action):
        text = action.help or ""
        default = action.default
        if "(default" in text or not action.option_strings or default is None or default is False \
                or default is argparse.SUPPRESS:
            return text
        shown = " ".join(map(str, default)) if isinstance(default, (list, tuple)) else str(default)
        return f"{text} (default: {shown.replace('%', '%%')})"


def _shown(value) -> str:
    return " ".join(map(str, value)) if isinstance(value, (list, tuple)) else str(value)


def _config_default(name: str) -> str:
    """TrainConfig's default of field ``name``, as a user types it on the command line."""
    import dataclasses

    from .train.config import TrainConfig

    field = TrainConfig.__dataclass_fields__[name]
    value = field.default_factory() if field.default is dataclasses.MISSING else field.default
    return _shown(value)


def _methods_epilog() -> str:
    from .train.methods import available_methods, get_method

    names = available_methods()
    pad = max(map(len, names))
    return "methods:\n" + "\n".join(f"  {name:<{pad}}  {get_method(name).description}" for name in names)


def _cmd_study(args) -> int:
    from .train.demo import DEMO_DEFAULTS
    from .train.study import STUDY_DEFAULTS, run_study

    try:
        base = _demo_config(args, {**DEMO_DEFAULTS, "epochs": STUDY_DEFAULTS["epochs"]})
        data = run_study(args.out_dir, seeds=args.seeds, methods=args.methods, base=base, quiet=args.quiet,
                         overwrite=args.overwrite, command=args.command_line)
    except (ValueError, FileNotFoundError) as e:
        return _fail("study", e)
    print(f"study of {len(data['methods'])} method(s) x {len(data['seeds'])} seed(s) written: {args.out_dir}/study.md")
    return 0


def _add_train_arguments(p) -> None:
    """The TrainConfig options of ``train``. Their argparse defaults stay None, so that only the options given
    override the --config file; the help shows TrainConfig's defaults."""
    from .models.backbones import BACKBONE_NAMES
    from .train.config import DATASETS, DEVICES, TRAIN_WIDTH
    from .train.loading import SYNTHETIC_SIZE
    from .train.methods import available_methods
    from .train.tasks import KNOWN_TASKS
    from .train.aggregation import AGGREGATORS
    from .train.lr_schedule import LR_INTERVALS, LR_SCHEDULES
    from .train.optim import OPTIMIZERS
    from .train.presets import PRESETS
    from .train.weighting import WEIGHTINGS

    def option(flag, help, **kw):
        name = flag[2:].replace("-", "_")
        kw.setdefault("metavar", "N" if kw.get("type") is int else None)
        p.add_argument(flag, help=f"{help} (default: {_config_default(name)})", **kw)

    p.add_argument("--preset", metavar="NAME", choices=sorted(PRESETS),
                   help=f"the authors' published configuration of a method on a dataset, one of: "
                        f"{', '.join(sorted(PRESETS))} (docs/presets.md lists the values and their sources; "
                        f"--config and the options below override it) (default: none)")
    p.add_argument("--config", metavar="JSON", help="a JSON file with TrainConfig fields (the options below override "
                                                    "it; without it, the defaults below apply)")
    option("--method", f"the method to train, one of: {', '.join(available_methods())} (see the list below)")
    option("--tasks", f"tasks to train, from: {' '.join(KNOWN_TASKS)}", nargs="+", metavar="TASK")
    option("--dataset", f"one of: {', '.join(DATASETS)}")
    p.add_argument("--data-root", metavar="DIR", help="root folder of the NYUv2/Cityscapes .npy layout (default: none; "
                                                      "those datasets need it)")
    p.add_argument("--size", type=int, nargs=2, metavar=("H", "W"),
                   help=f"image size (default: {_shown(SYNTHETIC_SIZE)} for synthetic, the stored size for "
                        f"nyuv2/cityscapes)")
    option("--n-train", "number of synthetic training images", type=int)
    option("--n-val", "number of synthetic validation images", type=int)
    option("--backbone", f"{BACKBONE_NAMES} (pip install 'mtl_ops[timm]' or 'mtl_ops[torchvision]'); every "
                         f"method takes each, AdaShare the ResNet-18/34 ones (docs/backbones.md)")
    p.add_argument("--width", type=int, metavar="N",
                   help=f"base width of the built-in ResNets (default: {TRAIN_WIDTH}); refused with a timm or "
                        f"torchvision backbone, which have their own widths")
    weights = p.add_mutually_exclusive_group()
    weights.add_argument("--pretrained", metavar="PATH",
                         help="backbone weights from a local file: safetensors, or a torch state dict (read with "
                              "weights_only=True); the loaded, missing and unused keys are printed (default: random "
                              "initialisation)")
    weights.add_argument("--pretrained-download", action="store_true",
                         help="the backbone's published weights from timm or torchvision, which download them "
                              "(needs network access; not for the built-in ResNets) (default: off)")
    option("--epochs", "training epochs (the phases of AdaShare, PDF and Medusa's UFL default to it; "
                      "--schedule-options sets them one by one)", type=int)
    option("--batch-size", "images per step (per process under torchrun)", type=int)
    option("--lr", "learning rate (the schedule's peak)", type=float)
    option("--weight-decay", "weight decay (Adam/RAdam/SGD: L2 on the gradient; AdamW: decoupled)", type=float)
    option("--optimizer", f"one of: {', '.join(OPTIMIZERS)}")
    option("--momentum", "SGD momentum", type=float)
    p.add_argument("--nesterov", action=argparse.BooleanOptionalAction, default=None,
                   help="SGD with Nesterov momentum (default: off)")
    option("--betas", "Adam/AdamW/RAdam betas", type=float, nargs=2, metavar=("B1", "B2"))
    option("--eps", "Adam/AdamW/RAdam epsilon", type=float)
    p.add_argument("--grad-clip", type=float, metavar="NORM",
                   help="clip the gradients' global L2 norm to NORM before each step (default: no clipping)")
    option("--lr-schedule", f"learning-rate schedule, one of: {', '.join(LR_SCHEDULES)} (poly and cosine run to the "
                            f"end of training)")
    option("--lr-interval", "the schedule advances after every epoch or every optimisation step; --warmup, "
                            "--lr-step-size and --lr-milestones count in this unit", choices=LR_INTERVALS)
    option("--lr-power", "poly: lr × (1 − t/T)^power", type=float)
    option("--lr-min", "cosine: the final learning rate", type=float)
    p.add_argument("--lr-step-size", type=int, metavar="N",
                   help="step: multiply the lr by --lr-gamma every N epochs/steps (default: none; step needs it)")
    option("--lr-milestones", "multistep: multiply the lr by --lr-gamma at these epochs/steps", type=int,
           nargs="+", metavar="N")
    option("--lr-gamma", "step/multistep: the decay factor", type=float)
    option("--warmup", "linear warm-up length in epochs/steps (see --lr-interval); 0: none", type=int)
    option("--warmup-start-factor", "the warm-up starts at this fraction of --lr", type=float)
    p.add_argument("--best-metric", metavar="KEY",
                   help="also keep best.pt, the evaluated epoch with the best KEY: delta_m (needs --baseline-metrics) "
                        "or TASK.METRIC, e.g. semseg.mIoU or depth.rmse, in the metric's own direction (default: "
                        "only last.pt)")
    p.add_argument("--baseline-metrics", metavar="JSON_FILE",
                   help="the baseline of --best-metric delta_m: a file written by mtl-ops eval --json, or "
                        "{task: {metric: value}} (default: none)")
    option("--weighting", f"how the tasks are combined: a loss weighting ({', '.join(WEIGHTINGS)}) or a torchjd "
                          f"aggregator on the shared backbone ({', '.join(AGGREGATORS)}; pip install "
                          f"'mtl_ops[torchjd]')")
    option("--dwa-temperature", "dwa: the softmax temperature", type=float)
    p.add_argument("--aggregator-options", metavar="JSON",
                   help="JSON of keyword arguments for the torchjd aggregator, e.g. '{\"c\": 0.4}' for cagrad "
                        "(default: torchjd's own; cagrad needs c, fairgrad alpha)")
    option("--aux-weight", "weight of the deep-supervision (auxiliary) losses", type=float)
    p.add_argument("--loss-weights", metavar="JSON",
                   help='fixed weight per task as JSON, e.g. \'{"depth": 2}\' (default: 1 for every task)')
    p.add_argument("--method-options", metavar="JSON",
                   help="JSON of keyword arguments for the method's network builder (default: the method's own)")
    p.add_argument("--schedule-options", metavar="JSON",
                   help="JSON for AdaShare's phases, PDF's schedule or Medusa's UFL protocol, e.g. "
                        "'{\"held_out\": \"normals\"}' (default: the method's own)")
    option("--device", f"one of: {', '.join(DEVICES)} (auto: cuda when available)")
    p.add_argument("--amp", action="store_true",
                   help="automatic mixed precision: bf16 on CPU, fp16 with loss scaling on CUDA (default: off)")
    p.add_argument("--no-augment", action="store_true",
                   help="no random flip (and no scale crop unless --scale-crop) (default: augment)")
    p.add_argument("--scale-crop", action=argparse.BooleanOptionalAction, default=None,
                   help="random scale crop of training samples (default: on for nyuv2/cityscapes, off for synthetic)")
    option("--crop-scales", "zoom factors >= 1 the scale crop draws from", type=float, nargs="+", metavar="S")
    option("--seed", "seed of the initialisation, data order and augmentation", type=int)
    option("--num-workers", "DataLoader worker processes", type=int)
    p.add_argument("--num-threads", type=int, metavar="N",
                   help="torch CPU threads (default: 1 when the machine is busy, else torch's default)")
    p.add_argument("--max-steps-per-epoch", type=int, metavar="N", help="stop each epoch after N steps "
                                                                        "(default: the whole training set)")
    p.add_argument("--cache-dir", metavar="DIR", help="where the synthetic scenes are cached (default: "
                                                      "$MTL_OPS_CACHE/synthetic, else ~/.cache/mtl_ops/synthetic)")
    p.add_argument("--out-dir", metavar="DIR", help="the run's folder: config.json, checkpoints (last.pt), "
                                                    "metrics.jsonl / metrics.csv; a new run needs it empty or new "
                                                    "(see --overwrite) (default: nothing is written)")
    p.add_argument("--skip-nonfinite", action="store_true",
                   help="skip training steps whose loss is NaN or infinite (counted in the log rows' skipped_steps, "
                        "each printed) instead of stopping the run with a message naming the task and the step")
    p.add_argument("--quiet", action="store_true",
                   help="no progress bar or per-epoch lines (the bar shows only on a terminal anyway)")


def _add_demo_arguments(p, defaults: dict) -> None:
    """The options demo and study share: which methods, and the data and budget (``defaults``: the demo's or
    the study's; the argparse defaults stay None so that only the flags given override them)."""
    from .train.demo import demo_methods

    def option(flag, help, **kw):
        name = flag[2:].replace("-", "_")
        default = defaults[name] if name in defaults else _config_default(name)
        kw.setdefault("metavar", "N" if kw.get("type") is int else None)
        p.add_argument(flag, help=f"{help} (default: {_shown(default)})", **kw)

    p.add_argument("--methods", nargs="+", metavar="METHOD",
                   help=f"methods to train and compare (default: {' '.join(demo_methods())})")
    option("--tasks", "tasks to train", nargs="+", metavar="TASK")
    option("--n-train", "number of synthetic training images", type=int)
    option("--n-val", "number of synthetic validation images", type=int)
    option("--epochs", "training epochs of each method (AdaShare's phases are the demo's own)", type=int)
    option("--batch-size", "images per step", type=int)
    option("--width", "base width of the built-in ResNets (left out with a timm or torchvision backbone)", type=int)
    option("--backbone", "resnet10, resnet18, resnet34, timm:<model name> or torchvision:<resnet name>")
    option("--size", "image size", type=int, nargs=2, metavar=("H", "W"))
    p.add_argument("--cache-dir", metavar="DIR", help="where the synthetic scenes are cached (default: "
                                                      "$MTL_OPS_CACHE/synthetic, else ~/.cache/mtl_ops/synthetic)")
    p.add_argument("--num-threads", type=int, metavar="N",
                   help="torch CPU threads (default: 1 when the machine is busy, else torch's default)")
    p.add_argument("--quiet", action="store_true", help="no progress bars or per-epoch lines")


def _resume_flags(parser) -> list:
    """The flags of ``parser`` for the TrainConfig fields a resumed run may change."""
    from .train.resume import RESUME_MAY_CHANGE

    flags = ["--" + name.replace("_", "-") for name in RESUME_MAY_CHANGE]
    return [f for f in flags if f in parser._option_string_actions]


def build_parser() -> argparse.ArgumentParser:
    from . import __version__

    parser = argparse.ArgumentParser(prog="mtl-ops", description=__doc__, formatter_class=_HelpFormatter)
    parser.add_argument("--version", action="version", version=f"mtl-ops {__version__} (torch {torch.__version__})")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND",
                                help="one of these (mtl-ops COMMAND --help shows its options):")

    def command(name, help, **kw):
        return sub.add_parser(name, help=help, description=help, formatter_class=_HelpFormatter, **kw)

    p = command("info", "versions, device, and per op and backend: available or why not")
    p.add_argument("--json", action="store_true", help="print the report as JSON")
    p.set_defaults(func=_cmd_info)
    p = command("bench", "time every backend against the reference and torch.compile(reference)")
    p.add_argument("ops", nargs="*", help="ops to benchmark (default: all); with --networks, methods")
    p.add_argument("--networks", action="store_true",
                   help="time a training step of each method's whole network instead (fused ops, reference ops, "
                        "torch.compile of the network on the reference ops)")
    p.add_argument("--device", help="cpu or cuda (default: cuda if available)")
    p.add_argument("--dtype", nargs="+", default=["float32"], metavar="DTYPE",
                   help=f"dtypes, from: {', '.join(_DTYPES)}")
    p.add_argument("--quick", action="store_true", help="tiny sizes, few repeats: a smoke test, not a measurement")
    p.add_argument("--size", choices=("full", "gpu"), default="full",
                   help="full: the stated sizes; gpu: sizes several times a GPU's L2 cache for the memory-bound ops "
                        "(the others keep their full size)")
    p.add_argument("--jsonl", metavar="PATH", help="append each row to PATH as it is measured (JSON lines)")
    p.add_argument("--providers", nargs="+", metavar="NAME",
                   help="run only these providers (reference, compile(reference), cpp, cuda, triton, ...; with "
                        "--networks: reference, fused, compile(reference)) (default: all)")
    p.add_argument("--min-seconds", type=float, default=0.5, metavar="S",
                   help="time each provider for at least this long; the median is reported")
    p.add_argument("--once", action="store_true",
                   help="one call per provider, no memory measurement: fills the compile caches, measures nothing")
    p.add_argument("--json", metavar="PATH", help="also write the rows (op, provider, shape, dtype, device, "
                                                   "versions, commit, time, peak memory) as JSON")
    p.set_defaults(func=_cmd_bench)
    p = command("train", "train one method (torchrun for several processes)", epilog=_methods_epilog())
    _add_train_arguments(p)
    p.add_argument("--resume", metavar="CHECKPOINT",
                   help="continue the run in CHECKPOINT (e.g. runs/x/last.pt) with the configuration stored in it, "
                        "writing into its folder; other flags may change only " + ", ".join(_resume_flags(p)) +
                        " (other flags that differ from the run are refused, listed)")
    p.add_argument("--overwrite", action="store_true",
                   help="allow a new run into an --out-dir that already holds files: the run replaces config.json, "
                        "metrics.jsonl/.csv, last.pt, best.pt and curves.png there (other files stay)")
    p.set_defaults(func=_cmd_train)
    p = command("eval", "validation metrics of a checkpoint")
    p.add_argument("checkpoint", help="a checkpoint written by mtl-ops train (last.pt)")
    p.add_argument("--data-root", metavar="DIR", help="the dataset's root folder (default: the one it was trained on)")
    p.add_argument("--cache-dir", metavar="DIR", help="the synthetic scenes' cache (default: the one it was trained "
                                                      "with)")
    p.add_argument("--json", metavar="PATH", help="also write the metrics as JSON")
    p.set_defaults(func=_cmd_eval)
    p = command("predict", "segmentation, depth, normals and edges PNGs for one image")
    p.add_argument("checkpoint", help="a checkpoint written by mtl-ops train (last.pt)")
    p.add_argument("image", metavar="IMAGE",
                   help="an image file Pillow reads (PNG of any mode, JPEG, ...; 16-bit grey scaled by 1/65535) or "
                        "an .npy array (H, W[, 3]): uint8, uint16, or float in [0, 1] (or 0-255 levels); alpha is "
                        "dropped")
    p.add_argument("--out-dir", default=".", metavar="DIR", help="where the PNGs <IMAGE name>_<task>.png go")
    p.add_argument("--size", type=int, nargs=2, metavar=("H", "W"), help="resize the image first (default: its size)")
    p.set_defaults(func=_cmd_predict)
    from .train.demo import DEMO_DEFAULTS, TIMING_STEPS
    from .train.study import STUDY_DEFAULTS

    p = command("demo", "train and compare every method on the synthetic scenes; write a report")
    p.add_argument("--out-dir", default="mtl_ops_demo", metavar="DIR",
                   help="where report.md, metrics.json, the figures and each method's run go")
    _add_demo_arguments(p, DEMO_DEFAULTS)
    p.add_argument("--seed", type=int, metavar="N",
                   help=f"seed of the initialisation, data order and augmentation (default: "
                        f"{DEMO_DEFAULTS['seed'] if 'seed' in DEMO_DEFAULTS else _config_default('seed')})")
    p.add_argument("--timing-steps", type=int, default=TIMING_STEPS, metavar="N",
                   help="alternated training steps per backend when timing a step (median per-pair ratio reported)")
    p.set_defaults(func=_cmd_demo)
    study_defaults = {**DEMO_DEFAULTS, "epochs": STUDY_DEFAULTS["epochs"]}
    p = command("study", "every method with several seeds at a larger budget: mean ± standard deviation of each "
                         "metric and of Δm, per-seed spread plots (resumable)")
    p.add_argument("--out-dir", default="mtl_ops_study", metavar="DIR",
                   help="where study.md, study.json, the spread plots and every run go; a study stopped part-way "
                        "continues there, skipping finished runs")
    p.add_argument("--seeds", type=int, default=STUDY_DEFAULTS["seeds"], metavar="N",
                   help="number of seeds: 0 ... N-1")
    _add_demo_arguments(p, study_defaults)
    p.add_argument("--overwrite", action="store_true",
                   help="train every run again, also those finished in --out-dir (needed to change the budget of a "
                        "study there)")
    p.set_defaults(func=_cmd_study)
    return parser


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    args = build_parser().parse_args(argv)
    args.command_line = shlex.join(["mtl-ops"] + argv)  # what a report records as the command that made it
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
