"""``egt``: run a pipeline locally, validate run files, build the tiny model, render reports, score
candidates with a trained reward model."""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from pathlib import Path

from egt.spec import STAGES, EGTRun, SpecError, dump_run, load_run


def cmd_run(args: argparse.Namespace) -> int:
    if not args.local:
        print(
            "egt run needs --local (cluster runs go through kubectl apply and the operator)", file=sys.stderr
        )
        return 2
    if args.start and args.stop and STAGES.index(args.start) > STAGES.index(args.stop):
        print(f"egt run: --from {args.start} comes after --until {args.stop}", file=sys.stderr)
        return 2
    run = load_run(args.file)
    from egt.runner import run_local, summary_table

    try:
        store, outcomes = run_local(
            run,
            args.workdir,
            start=args.start,
            stop=args.stop,
            force=tuple(args.force),
            progress=not args.quiet,
        )
    except Exception as error:
        logging.getLogger("egt").debug("stage failed", exc_info=True)
        print(
            f"egt run: {error}\n(finished stages are kept; rerun to resume, -v for the traceback)",
            file=sys.stderr,
        )
        return 1
    print()
    print(summary_table(outcomes))
    # The report once the run's last stage is done (evaluate, or score / filter after it).
    if not args.no_report and outcomes and outcomes[-1].stage == run.spec.stages[-1]:
        from egt.report import stored_report, write_report

        report = write_report(store, run, args.workdir / run.name / "report")
        print(f"\nreport: {report}\n  stored with the run: {stored_report(store, run)}")
    return 0


def cmd_validate(args: argparse.Namespace) -> int:
    run = load_run(args.file)
    missing = missing_inputs(run, check_s3=args.check_s3)
    if missing:
        print(f"{args.file}: inputs not found:\n" + "\n".join(f"  {m}" for m in missing), file=sys.stderr)
        return 2
    if args.resolved:
        print(dump_run(run), end="")
    else:
        print(f"{args.file}: valid EGTRun {run.name!r}")
    for warning in local_warnings(run):
        print(f"warning: {warning}", file=sys.stderr)
    return 0


def local_warnings(run: EGTRun) -> list[str]:
    """What would stop this run here, though the file is valid: API keys unset in this environment
    (on a cluster they come from cluster.teacher_secret)."""
    return [
        f"spec.{where}.api_key_env: {endpoint.api_key_env} is not set here, so a local run stops at that "
        "stage; set it, or set api_key_env: null for an endpoint that needs no key"
        for where, endpoint in run.spec.keyed_endpoints().items()
        if not os.environ.get(endpoint.api_key_env)
    ]


def missing_inputs(run: EGTRun, check_s3: bool = False) -> list[str]:
    """The run's input files that are not there: local ones always, S3 ones when asked (one HEAD
    request each, with this environment's credentials)."""
    from egt.storage.store import split_uri  # boto3: only for the commands that read a store

    spec = run.spec
    named = {
        (f"data.{name}.uri" if name in ("sft", "rl", "scalar_extra") else f"data.eval.{name}.uri"): d.uri
        for name, d in spec.data.datasets().items()
    }
    named["score.candidates"] = spec.score.candidates
    missing = []
    for field, uri in named.items():
        if uri is None or (uri.startswith("s3://") and not check_s3):
            continue
        store, key = split_uri(uri, spec.store.endpoint_url)
        try:
            found = store.exists(key)
        except (OSError, ValueError) as error:
            missing.append(f"spec.{field}: {uri} cannot be checked: {error}")
            continue
        if not found:
            missing.append(
                f"spec.{field}: {uri} does not exist (relative paths resolve against the run file's folder)"
            )
    return missing


def cmd_schema(args: argparse.Namespace) -> int:
    print(json.dumps(EGTRun.model_json_schema(), indent=2))
    return 0


def cmd_tiny_model(args: argparse.Namespace) -> int:
    from egt.models.tiny import build_tiny_model

    print(build_tiny_model(args.out, seed=args.seed))
    return 0


def cmd_submit(args: argparse.Namespace) -> int:
    from egt_operator.submit import submit

    return submit(
        args.file,
        name=args.name,
        namespace=args.namespace,
        wait=args.wait,
        timeout=args.timeout,
        poll_seconds=args.poll,
    )


def cmd_status(args: argparse.Namespace) -> int:
    from egt_operator.submit import status

    return status(args.name, args.namespace)


def cmd_report(args: argparse.Namespace) -> int:
    from egt.report import stored_report, write_report
    from egt.storage.store import open_store

    run = load_run(args.file)
    store = open_store(run.spec.store.uri, run.spec.store.endpoint_url)
    print(write_report(store, run, args.workdir / run.name / "report"))
    print(f"  stored with the run: {stored_report(store, run)}")
    return 0


def cmd_sweep(args: argparse.Namespace) -> int:
    from egt.sweep.spec import load_sweep

    words = args.words
    if words[0] == "report" and len(words) == 2:
        action, path = "report", Path(words[1])
    elif len(words) == 1:
        action, path = ("submit" if args.submit else "local" if args.local else None), Path(words[0])
    else:
        print("usage: egt sweep FILE (--local | --submit [--wait]) | egt sweep report FILE", file=sys.stderr)
        return 2
    if action is None:
        print("egt sweep: give --local (run the arms here) or --submit (one EGTRun per arm)", file=sys.stderr)
        return 2
    sweep, runs = load_sweep(path)
    if action == "submit":
        from egt_operator.submit import submit_sweep

        return submit_sweep(runs, args.namespace, args.wait, args.timeout, args.poll)
    if action == "local":
        from egt.sweep.runner import executions, run_sweep_local

        try:
            outcomes = run_sweep_local(runs, args.workdir, progress=not args.quiet)
        except Exception as error:
            logging.getLogger("egt").debug("arm failed", exc_info=True)
            print(
                f"egt sweep: {error}\n(finished stages are kept and shared; rerun to resume)", file=sys.stderr
            )
            return 1
        ran = executions(outcomes)
        print("\nstage executions across the sweep: " + ", ".join(f"{s} {ran[s]}" for s in STAGES))
    from egt.sweep.report import render_sweep_report
    from egt.sweep.runner import collect_results

    out = args.workdir / sweep.name / "sweep-report"
    print(f"report: {render_sweep_report(sweep, runs, collect_results(runs), out)}")
    return 0


def cmd_score(args: argparse.Namespace) -> int:
    from egt.engines.best_of_n import score_file

    def say(line: str) -> None:
        if not args.quiet:
            print(line, file=sys.stderr)

    try:
        summary = score_file(
            args.model,
            args.candidates,
            args.out,
            tournament=args.tournament,
            max_new_tokens=args.max_new_tokens,
            batch_size=args.batch_size,
            device=args.device,
            dtype=args.dtype,
            progress=say,
            engine=args.engine,
        )
    except (ValueError, OSError) as error:
        print(f"egt score: {error}", file=sys.stderr)
        return 2
    print(
        f"{args.out}: {summary['prompts']} prompts, {summary['candidates']} candidates, {summary['kind']}: "
        f"{summary['model_calls']} model calls in {summary['seconds']:.1f} s"
    )
    return 0


def cmd_filter(args: argparse.Namespace) -> int:
    from egt.engines.filtering import filter_pool

    try:
        summary = filter_pool(
            args.model,
            args.pool,
            args.out_dir,
            fraction=args.fraction,
            batch_size=args.batch_size,
            max_new_tokens=args.max_new_tokens,
            device=args.device,
            dtype=args.dtype,
            engine=args.engine,
        )
    except (ValueError, OSError) as error:
        print(f"egt filter: {error}", file=sys.stderr)
        return 2
    print(
        f"{args.out_dir}: {summary['flagged']} of {summary['pairs']} pairs flagged ({summary['rule']}, "
        f"{summary['model']} model); kept.jsonl, flagged.jsonl, summary.json"
    )
    for kind, row in summary["by_truth_kind"].items():
        print(
            f"  {kind}: {row['flagged']} of {row['pairs']} flagged ({100 * row['share']:.1f}%; "
            f"a random flagger: {100 * row['random_share']:.1f}%)"
        )
    return 0


def add_reward_model_arguments(command: argparse.ArgumentParser, batch_help: str) -> None:
    """The trained model and how to run it, shared by `egt score` and `egt filter`."""
    command.add_argument(
        "model", type=Path, help="Model folder: a scalar reward model, or a run's sft/rl model."
    )
    command.add_argument("--batch-size", type=int, default=16, help=batch_help)
    command.add_argument(
        "--max-new-tokens", type=int, default=512, help="Reasoning models: tokens per judgement."
    )
    command.add_argument("--device", default="auto", help="auto, cpu or cuda.")
    command.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"])
    command.add_argument(
        "--engine", choices=["hf", "vllm"], default="hf", help="transformers, or vLLM where installed."
    )


def parser() -> argparse.ArgumentParser:
    root = argparse.ArgumentParser(
        prog="egt", description="Entropy-Guided Training of reasoning reward models."
    )
    root.add_argument("-v", "--verbose", action="store_true", help="Debug logging.")
    sub = root.add_subparsers(dest="command", required=True)

    run = sub.add_parser("run", help="Run a pipeline.")
    run.add_argument("file", type=Path, help="EGTRun file (YAML).")
    run.add_argument("--local", action="store_true", help="Run every stage in this process.")
    run.add_argument("--from", dest="start", choices=STAGES, help="First stage to run.")
    run.add_argument("--until", dest="stop", choices=STAGES, help="Last stage to run.")
    run.add_argument(
        "--force",
        nargs="+",
        default=[],
        choices=[*STAGES, "all"],
        metavar="STAGE",
        help="Rerun these stages even if up to date ('all' for every stage).",
    )
    run.add_argument(
        "--workdir", type=Path, default=Path(".cache/egt"), help="Local scratch (default .cache/egt)."
    )
    run.add_argument("--no-report", action="store_true", help="Skip the Markdown report.")
    run.add_argument("-q", "--quiet", action="store_true", help="No progress bars.")
    run.set_defaults(func=cmd_run)

    validate = sub.add_parser("validate", help="Check a run file; --resolved prints it with every default.")
    validate.add_argument("file", type=Path)
    validate.add_argument("--resolved", action="store_true")
    validate.add_argument(
        "--check-s3", action="store_true", help="Also check that s3:// inputs exist (one request each)."
    )
    validate.set_defaults(func=cmd_validate)

    schema = sub.add_parser("schema", help="Print the JSON schema of an EGTRun.")
    schema.set_defaults(func=cmd_schema)

    tiny = sub.add_parser("tiny-model", help="Build the tiny random-weight Qwen2.5-VL offline.")
    tiny.add_argument("out", type=Path)
    tiny.add_argument("--seed", type=int, default=0)
    tiny.set_defaults(func=cmd_tiny_model)

    submit = sub.add_parser(
        "submit",
        help="Create (or update) an EGTRun on the cluster; --wait follows it: exit 0 succeeded, 1 failed, "
        "2 invalid, 3 timed out.",
    )
    submit.add_argument("file", type=Path)
    submit.add_argument("--name", help="Run name instead of the file's metadata.name (CI: one per commit).")
    submit.add_argument("--namespace", "-n", help="Namespace (default: the kubeconfig context's).")
    submit.add_argument("--wait", action="store_true", help="Follow the run until it ends.")
    submit.add_argument("--timeout", type=float, help="Seconds to wait at most (the run goes on).")
    submit.add_argument("--poll", type=float, default=5.0, help="Seconds between status reads (default 5).")
    submit.set_defaults(func=cmd_submit)

    status = sub.add_parser("status", help="Print an EGTRun's stages and conditions from the cluster.")
    status.add_argument("name")
    status.add_argument("--namespace", "-n", help="Namespace (default: the kubeconfig context's).")
    status.set_defaults(func=cmd_status)

    sweep = sub.add_parser(
        "sweep",
        help="Run a sweep's arms (--local) or submit them (--submit); `egt sweep report FILE` renders it.",
    )
    sweep.add_argument("words", nargs="+", metavar="[report] FILE", help="EGTSweep file (YAML).")
    sweep.add_argument("--local", action="store_true", help="Run every arm here, sharing stages.")
    sweep.add_argument("--submit", action="store_true", help="Create one EGTRun per arm on the cluster.")
    sweep.add_argument("--wait", action="store_true", help="With --submit: follow the runs until all end.")
    sweep.add_argument("--timeout", type=float, help="With --wait: seconds to wait at most.")
    sweep.add_argument("--poll", type=float, default=5.0, help="Seconds between status reads (default 5).")
    sweep.add_argument("--namespace", "-n", help="Namespace (default: the kubeconfig context's).")
    sweep.add_argument("--workdir", type=Path, default=Path(".cache/egt"), help="Local scratch and reports.")
    sweep.add_argument("-q", "--quiet", action="store_true", help="No progress bars.")
    sweep.set_defaults(func=cmd_sweep)

    score = sub.add_parser(
        "score",
        help="Best of N: score each prompt's candidate responses with a trained reward model (scalar: one "
        "pass each; reasoning: a tournament, both orders per comparison).",
    )
    add_reward_model_arguments(score, "Sequences per forward pass.")
    score.add_argument(
        "candidates", type=Path, help='JSON Lines: {"id", "images": [...], "query", "candidates": [...]}.'
    )
    score.add_argument("--out", type=Path, required=True, help="JSON Lines of scores and the best candidate.")
    score.add_argument(
        "--tournament",
        choices=["round_robin", "knockout"],
        default="round_robin",
        help="Reasoning models: round_robin ranks all, N(N-1) calls; knockout finds the best, 2(N-1) calls.",
    )
    score.add_argument("-q", "--quiet", action="store_true", help="No per-prompt progress lines.")
    score.set_defaults(func=cmd_score)

    flt = sub.add_parser(
        "filter",
        help="Data cleaning: flag the pairs of a pool a trained reward model disagrees with; writes the "
        "pool split into kept.jsonl and flagged.jsonl.",
    )
    add_reward_model_arguments(flt, "Pairs per forward pass.")
    flt.add_argument("pool", type=Path, help="Native records (JSON Lines), images relative to the file.")
    flt.add_argument("--out-dir", type=Path, required=True)
    flt.add_argument(
        "--fraction",
        type=float,
        help="Flag this share of the pool with the lowest margins (default: margin < 0).",
    )
    flt.set_defaults(func=cmd_filter)

    report = sub.add_parser(
        "report",
        help="Render a run's Markdown report from its store, from anywhere that can read the store: into "
        "--workdir, and with the run (<store>/<run>/report/).",
    )
    report.add_argument("file", type=Path)
    report.add_argument("--workdir", type=Path, default=Path(".cache/egt"))
    report.set_defaults(func=cmd_report)
    return root


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.WARNING, format="%(levelname)s %(name)s: %(message)s"
    )
    try:
        return args.func(args)
    except SpecError as error:
        print(error, file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
