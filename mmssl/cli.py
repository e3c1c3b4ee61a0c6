"""`mmssl` command line: thin wrappers that parse arguments and call library functions."""

from __future__ import annotations

import argparse
import errno
import json
import logging
import os
import sys

from mmssl.errors import MmsslError

# storage faults reported as one line (full disk, quota, read-only file system, permissions, I/O error)
_STORAGE_ERRORS = {errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EACCES, errno.EPERM, errno.EIO}


def _train(args: argparse.Namespace) -> None:
    from mmssl.recipes import load_recipe
    from mmssl.train.loop import train

    recipe = load_recipe(args.recipe, args.overrides)
    metrics = train(recipe)
    if int(os.environ.get("RANK", "0")) == 0:
        print(json.dumps({"output_dir": recipe.output_dir, **metrics}, indent=2))


def _prepare(args: argparse.Namespace) -> None:
    from mmssl.config import DataConfig, WorldConfig
    from mmssl.errors import RecipeError
    from mmssl.prepare import prepare

    columns = {}
    for item in args.column:
        role, sep, name = item.partition("=")
        if not sep or not name:
            raise RecipeError(f"--column {item!r}: write ROLE=NAME, e.g. --column captions=alt_text")
        columns[role] = name
    if args.shard_size < 1 or (args.image_size is not None and args.image_size < 8) or args.workers < 1:
        raise RecipeError("--shard-size and --workers must be at least 1, --image-size at least 8")
    if args.source == "world":
        data = DataConfig(source="world", world=WorldConfig(num_scenes=args.world_scenes, image_size=64, seed=args.world_seed,
                                                            pair_fraction=0.0 if args.kind == "images" else 0.5))
    else:
        data = DataConfig(source="files", path=args.source, format=args.format, columns=columns)
    summary = prepare(data, args.out, args.kind, args.shard_size, args.image_size, args.workers)
    print(json.dumps(summary, indent=2))


def _eval(args: argparse.Namespace) -> None:
    from pathlib import Path

    from mmssl.errors import MmsslError
    from mmssl.recipes import apply_overrides, parse_recipe, read_yaml
    from mmssl.registry import get_objective

    from mmssl.outputs import RunManifest

    directory = Path(args.output_dir)
    if not (directory / "recipe.yaml").is_file() and args.bias:  # any model folder: the association tests only
        from mmssl.eval.bias_suite import bias_report, folder_kind

        print(json.dumps({"bias": bias_report(directory, folder_kind(directory))}, indent=2))
        return
    if not (directory / "recipe.yaml").is_file():
        raise MmsslError(f"{str(directory)!r} is not an mmssl output folder (no recipe.yaml); pass the output_dir of a "
                         "run (or, with --bias, any SentenceTransformer, transformers or open_clip model folder)")
    manifest = RunManifest.read(directory)
    if not (directory / "metrics.json").is_file() or (manifest is not None and manifest.status == "diverged"):
        why = {"diverged": f"the run diverged ({manifest.detail})" if manifest else "",
               "running": "the run has not finished (it is running, or was stopped)"}.get(
            manifest.status if manifest else "running", "the run has not finished")
        raise MmsslError(f"{str(directory)!r} holds no finished model to evaluate: {why}. Finish it with "
                         "`mmssl train ... train.resume_from=latest`, or evaluate another output_dir")
    recipe = parse_recipe(apply_overrides(read_yaml(directory / "recipe.yaml"), args.overrides))
    if recipe.objectives:  # a combined run: each objective's folder, with its own evaluation
        from mmssl.objectives._combined import sub_recipe

        metrics = {}
        for entry in recipe.objectives:
            objective = get_objective(entry.params.name)(sub_recipe(recipe, entry))
            metrics[entry.label] = _evaluate(objective, directory / entry.label, args.bias, recipe.seed)
    else:
        metrics = _evaluate(get_objective(recipe.objective.name)(recipe), directory, args.bias, recipe.seed)
    print(json.dumps(metrics, indent=2))


def _evaluate(objective, directory, bias: bool, seed: int) -> dict:
    """The objective's evaluation of the model in `directory`; with `bias`, the association tests too, also
    recorded in the folder's metrics.json (which the model card reads)."""
    from mmssl.outputs import RunManifest, atomic_write_json

    metrics = objective.evaluate_export(directory)
    if bias:
        from mmssl.eval.bias_suite import bias_report

        report = bias_report(directory, objective.output.kind, seed)
        metrics = {**metrics, "bias": report}
        run = RunManifest.read(directory) or RunManifest.read(directory.parent)  # a combined run's root holds it
        relative = "metrics.json" if run is not None and run.directory == directory else f"{directory.name}/metrics.json"
        if run is not None and run.owns(relative):
            saved = json.loads((directory / "metrics.json").read_text(encoding="utf-8"))
            atomic_write_json(directory / "metrics.json", {**saved, "bias": report})
        else:  # mmssl only rewrites files a run of its own wrote
            logging.getLogger("mmssl").warning("%s was not written by an mmssl run: the bias results are printed, not "
                                               "saved", directory / "metrics.json")
    return metrics


def _mine(args: argparse.Namespace) -> None:
    from mmssl.mining.config import load_mining_config
    from mmssl.mining.run import mine, write

    cfg = load_mining_config(args.config, args.overrides)
    result = mine(cfg)
    path = write(result, cfg)
    print(json.dumps({"output": str(path), **result.stats}, indent=2))


def _push(args: argparse.Namespace) -> None:
    from pathlib import Path

    from mmssl.export.hub import push_dataset, push_model

    common = {"endpoint": args.endpoint, "private": args.private, "overwrite": args.overwrite, "license": args.license}
    if Path(args.path).is_file():  # a mined (or augmented) dataset file
        result = push_dataset(args.path, args.repo_id, **common)
    else:
        result = push_model(args.path, args.repo_id, revision=args.revision, commit_message=args.message, **common)
    print(json.dumps({"repo_id": result.repo_id, "commit_url": result.commit_url, "files": result.files}, indent=2))


def _report(args: argparse.Namespace) -> None:
    from mmssl.report.page import write_report

    page = write_report(args.output_dirs, args.out)
    print(json.dumps({"report": str(page), "figures": sorted(p.name for p in page.parent.glob("*.png"))}, indent=2))


def _sweep(args: argparse.Namespace) -> None:
    from mmssl.sweep import sweep

    result = sweep(args.recipe, args.grid, args.out, args.launcher, args.dry_run, args.keep_going)
    if args.dry_run:
        print("\n".join(result["commands"]))
    else:
        print(json.dumps(result, indent=2))


def _check(args: argparse.Namespace) -> None:
    import yaml

    from mmssl.recipes import load_recipe, recipe_to_dict

    print(yaml.safe_dump(recipe_to_dict(load_recipe(args.recipe, args.overrides)), sort_keys=False), end="")


def _add_augment_arguments(parser: argparse.ArgumentParser) -> None:
    from mmssl import augment

    augment.add_arguments(parser)
    parser.set_defaults(func=augment.run)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="mmssl", description="Self-supervised pretraining of text and image-text encoders.")
    parser.add_argument("-v", "--verbose", action="store_true", help="show library log messages and full tracebacks")
    commands = parser.add_subparsers(dest="command", required=True)

    train = commands.add_parser("train", help="run a recipe: mmssl train configs/mlm_world.yaml train.max_steps=100")
    train.add_argument("recipe", help="path of a YAML recipe (see configs/)")
    train.add_argument("overrides", nargs="*", help="dotted key=value overrides, e.g. train.batch_size=16")
    train.set_defaults(func=_train)

    evaluate = commands.add_parser("eval", help="evaluate a trained output folder: mmssl eval runs/mlm_world")
    evaluate.add_argument("output_dir", help="the output_dir of an mmssl run")
    evaluate.add_argument("overrides", nargs="*", help="overrides of the saved recipe, e.g. data.eval_path=held_out.txt")
    evaluate.add_argument("--bias", action="store_true", help="also run the association tests (WEAT, SEAT, and for "
                          "image-text models skin tone x pleasantness); recorded in metrics.json and the model card")
    evaluate.set_defaults(func=_eval)

    push = commands.add_parser("push", help="publish an output folder to the Hugging Face Hub with a model card")
    push.add_argument("path", help="an mmssl output folder, or a dataset file written by `mmssl mine`")
    push.add_argument("--repo-id", required=True, help="namespace/name")
    push.add_argument("--private", action="store_true")
    push.add_argument("--revision", help="branch to publish to (created if missing)")
    push.add_argument("--message", help="commit message")
    push.add_argument("--overwrite", action="store_true", help="publish over a repo that already has files")
    push.add_argument("--license", help="license for the card metadata, e.g. apache-2.0")
    push.add_argument("--endpoint", help="Hub endpoint (default: HF_ENDPOINT or huggingface.co)")
    push.set_defaults(func=_push)

    mine = commands.add_parser("mine", help="mine hard negatives (BM25, dense or hybrid) for (query, positive) pairs")
    mine.add_argument("config", help="mining recipe (YAML), e.g. configs/mine_world_bm25.yaml")
    mine.add_argument("overrides", nargs="*", help="dotted key=value overrides, e.g. num_negatives=3")
    mine.set_defaults(func=_mine)

    augment = commands.add_parser("augment", help="make positive views (back-translation, lexical edits) into a dataset")
    _add_augment_arguments(augment)

    report = commands.add_parser("report", help="draw a run's (or several runs') curves and diagnostics into one "
                                 "HTML page: mmssl report runs/clip_world")
    report.add_argument("output_dirs", nargs="+", help="output folders of mmssl runs; several are overlaid")
    report.add_argument("--out", help="report folder (default: DIR/report for one run, ./mmssl-report for several)")
    report.set_defaults(func=_report)

    sweep = commands.add_parser("sweep", help="run a recipe over a grid of overrides, one process per run, and "
                                "tabulate the results: mmssl sweep configs/clip_world.yaml objective.views.color_jitter=0,0.2,0.4")
    sweep.add_argument("recipe")
    sweep.add_argument("grid", nargs="+", help="KEY=V1,V2,... to sweep (KEY=VALUE: the same for every run)")
    sweep.add_argument("--out", help="folder of the runs, the table and the report (default: runs/sweep_<recipe>)")
    sweep.add_argument("--launcher", help="command each run starts behind, e.g. 'torchrun --standalone --nproc_per_node 2'")
    sweep.add_argument("--dry-run", action="store_true", help="print every run's command instead of running it")
    sweep.add_argument("--keep-going", action="store_true", help="run the remaining runs after one fails")
    sweep.set_defaults(func=_sweep)

    prepare = commands.add_parser("prepare", help="write data as shards for streaming (WebDataset tars for images, "
                                  "JSON Lines for text, with sizes.json): mmssl prepare photos/ shards/ --kind images")
    prepare.add_argument("source", help="a folder, file, glob or brace pattern of the input data, or 'world' for "
                         "the built-in data")
    prepare.add_argument("out", help="a new folder for the shards")
    prepare.add_argument("--kind", choices=["image_text", "images", "text"], default="image_text",
                         help="what the samples hold (default image_text: images with captions)")
    prepare.add_argument("--format", default="auto", help="input format (default: told by the file extensions)")
    prepare.add_argument("--column", action="append", default=[], metavar="ROLE=NAME",
                         help="map an input column to a role (image, captions, label, text), e.g. captions=alt")
    prepare.add_argument("--shard-size", type=int, default=1000, help="samples per output shard (default 1000)")
    prepare.add_argument("--image-size", type=int, help="resize images so their shorter side is this (default: keep)")
    prepare.add_argument("--workers", type=int, default=os.cpu_count() or 1, help="processes (default: all cores)")
    prepare.add_argument("--world-scenes", type=int, default=2000, help="scenes of the built-in world (source 'world')")
    prepare.add_argument("--world-seed", type=int, default=0, help="seed of the built-in world (another seed: other scenes)")
    prepare.set_defaults(func=_prepare)

    check = commands.add_parser("check", help="validate a recipe and print it with every default filled in")
    check.add_argument("recipe")
    check.add_argument("overrides", nargs="*")
    check.set_defaults(func=_check)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    if not args.verbose:
        os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
        import datasets

        datasets.disable_progress_bars()
        logging.getLogger("mmssl").setLevel(logging.INFO)
    try:
        args.func(args)
    except MmsslError as exc:
        if args.verbose:
            raise
        print(f"mmssl: error: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:
        if args.verbose or exc.errno not in _STORAGE_ERRORS:
            raise
        where = f" {exc.filename!r}" if exc.filename else ""
        fix = ("free some space" if exc.errno in (errno.ENOSPC, errno.EDQUOT) else
               "write somewhere else" if exc.errno == errno.EROFS else "fix the permissions")
        print(f"mmssl: error: cannot access{where}: {exc.strerror}; {fix}, then run the same command again "
              "(completed checkpoints and earlier outputs are intact)", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("mmssl: interrupted; completed checkpoints are intact (resume with train.resume_from=latest)", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
