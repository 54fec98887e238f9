"""`python -m backend farm`: shots and batches of avatars on a render farm or cluster.

    farm slurm render SHOT.blend --frames 1-1000 --chunk 50 --out //render/####.png [--submit] [--wait]
    farm slurm train PROMPTS.txt --runs DIR [--max-parallel N --gpus-per-task 1 --time T] [--wait] -- TRAIN OPTIONS
    farm slurm status JOB_DIR [--wait]
    farm openjd render SHOT.blend --frames 1-1000 --chunk 50 --out BUNDLE      (Open Job Description)
    farm openjd train PROMPTS.txt --runs DIR --out BUNDLE -- TRAIN OPTIONS
    farm flamenco install DIR                                                  (Flamenco job types)

The unit of work is a chunk of frames rendered by Blender with the add-on (frames already
written are skipped) or one `backend train --resume` per prompt; both are safe to run again, so
submitting the same command twice finishes what the first left. See docs/farm.md.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from .common import CommandError


def _split_train_args(argv: list[str]) -> tuple[list[str], list[str]]:
    if "--" in argv:
        i = argv.index("--")
        return argv[:i], argv[i + 1:]
    return argv, []


def _render_job(args: argparse.Namespace):
    from ..farm.units import render_job

    return render_job(args.shot, args.frames, args.chunk, out=args.pattern, blender=args.blender,
                      python=args.python, body_model=args.body_model, path_map=args.path_map)


def _train_job(args: argparse.Namespace):
    from ..farm.units import train_job

    return train_job(args.prompts, args.runs, args.train_args, python=args.python,
                     ranks=getattr(args, "gpus_per_task", 1) or 1)   # several GPUs: one avatar, view-parallel


def _slurm_options(args: argparse.Namespace):
    from ..farm.slurm import SlurmOptions

    if args.max_parallel is not None and args.max_parallel < 1:
        raise CommandError("--max-parallel must be at least 1")
    return SlurmOptions(max_parallel=args.max_parallel, gpus_per_task=args.gpus_per_task,
                        cpus_per_task=args.cpus_per_task, mem=args.mem, time=args.time, partition=args.partition,
                        job_name=args.job_name, sbatch_args=list(args.sbatch_arg))


def _follow(job_dir: Path, wait: bool, timeout: float | None) -> int:
    import json

    from ..farm import slurm

    if wait:
        job_id = json.loads((job_dir / "job.json").read_text()).get("job_id")
        if not job_id:
            raise CommandError(f"{job_dir} was never submitted (no job id in job.json)")
        slurm.wait(str(job_id), timeout=timeout)
    reports = slurm.report(job_dir)
    print(slurm.format_report(reports))
    return 0 if all(r.done for r in reports) else 1


def _slurm(args: argparse.Namespace) -> int:
    from ..farm import slurm

    if args.kind == "status":
        return _follow(Path(args.job_dir).absolute(), args.wait, args.wait_timeout)
    job = _render_job(args) if args.kind == "render" else _train_job(args)
    if args.job_dir:
        job_dir = Path(args.job_dir)
    elif args.kind == "render":
        shot = Path(job.shot)  # type: ignore[union-attr]
        job_dir = shot.with_name(f"{shot.stem}.farm")
    else:
        job_dir = Path(job.runs_dir) / "farm"  # type: ignore[union-attr]
    script = slurm.write_job(job, job_dir, _slurm_options(args))
    print(f"wrote {script} ({len(job.chunks()) if args.kind == 'render' else len(job.runs)} array tasks)",  # type: ignore[union-attr]
          file=sys.stderr)
    if not (args.submit or args.wait):
        print(f"submit with: sbatch {script}   (or run this command again with --submit)", file=sys.stderr)
        print(script)
        return 0
    job_id = slurm.submit(job_dir)
    print(f"submitted job {job_id}; follow it with: python -m backend farm slurm status {job_dir.absolute()} --wait",
          file=sys.stderr)
    if not args.wait:
        print(job_id)
        return 0
    return _follow(job_dir.absolute(), True, args.wait_timeout)


def _openjd(args: argparse.Namespace) -> int:
    from ..farm import openjd

    if args.kind == "render":
        path = openjd.write_render_bundle(_render_job(args), args.out)
    else:
        path = openjd.write_train_bundle(_train_job(args), args.out)
    print(f"wrote the Open Job Description bundle {path.parent}; run it here with:\n"
          f"  openjd run {path} --job-param file://{path.parent / 'job_params.json'}", file=sys.stderr)
    print(path)
    return 0


def _flamenco(args: argparse.Namespace) -> int:
    from ..farm import flamenco

    written = flamenco.install(args.dir, python=args.python)
    for path in written:
        print(path)
    print(f"installed {len(written)} Flamenco job types into {args.dir} (restart Flamenco Manager to load them)",
          file=sys.stderr)
    return 0


def _add_render(p: argparse.ArgumentParser, out_is_pattern: bool) -> None:
    p.add_argument("shot", help="the .blend to render (its path must be the same on the workers, or mapped)")
    p.add_argument("--frames", required=True, help="frames: 1-1000, 1..250, 1-3,9")
    p.add_argument("--chunk", type=int, default=10, help="frames per task (default 10)")
    if out_is_pattern:
        p.add_argument("--out", "--pattern", dest="pattern", default=None, metavar="PATTERN",
                       help="where frames go, like Blender's -o: # for digits, // for the .blend's folder "
                            "(default: the shot's own output path)")
    else:
        p.add_argument("--pattern", default=None, help="where frames go, like Blender's -o (default: the shot's own)")
    p.add_argument("--blender", default=None, metavar="EXE",
                   help="Blender on the workers (default: blender on PATH), or a Python that has the bpy module "
                        "(named python*)")
    p.add_argument("--python", default=None, metavar="PY",
                   help="the backend's interpreter on the workers (default: what the add-on finds there)")
    p.add_argument("--body-model", default=None, metavar="F", help="SMPL-X .npz on the workers ($DREAMWALTZ_SMPLX)")
    p.add_argument("--path-map", default=None, metavar="MAP",
                   help="FROM=TO;... for paths stored in the shot ($DREAMWALTZ_PATH_MAP on the workers)")


def _add_train(p: argparse.ArgumentParser) -> None:
    p.add_argument("prompts", help="a text file: one prompt per line (# comments)")
    p.add_argument("--runs", required=True, metavar="DIR", help="one run folder per prompt is made here")
    p.add_argument("--python", default=None, metavar="PY", help="Python with torch on the workers (default: this one)")


def _add_slurm_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--job-dir", default=None, help="where the script, logs and task records go")
    p.add_argument("--max-parallel", type=int, default=None, metavar="N", help="at most N tasks at once")
    p.add_argument("--gpus-per-task", type=int, default=1, metavar="N",
                   help="GPUs per task (--gres=gpu:N; 0: none); train: N > 1 trains each avatar on its N GPUs, "
                        "view-parallel (torchrun, --views a multiple of N)")
    p.add_argument("--cpus-per-task", type=int, default=None, metavar="N")
    p.add_argument("--mem", default=None, help="memory per task, e.g. 32G")
    p.add_argument("--time", default=None, metavar="T", help="time limit per task (Slurm's format: 90, 4:00:00, "
                                                              "1-00:00:00); trainings get SIGTERM shortly before")
    p.add_argument("--partition", default=None)
    p.add_argument("--job-name", default=None)
    p.add_argument("--sbatch-arg", action="append", default=[], metavar="OPT",
                   help="another sbatch option, e.g. --sbatch-arg=--account=vision (repeatable)")
    p.add_argument("--submit", action="store_true", help="submit with sbatch")
    p.add_argument("--wait", action="store_true", help="submit, wait for every task and report (exit 1 unless all done)")
    p.add_argument("--wait-timeout", type=float, default=None, metavar="S", help="stop waiting after S seconds")


def main(argv: list[str]) -> int:
    argv, train_args = _split_train_args(list(argv))
    parser = argparse.ArgumentParser(prog="python -m backend farm", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="system", required=True)

    slurm_p = sub.add_parser("slurm", help="Slurm array jobs").add_subparsers(dest="kind", required=True)
    p = slurm_p.add_parser("render", help="render a shot's frames as an array of chunks")
    _add_render(p, out_is_pattern=True)
    _add_slurm_options(p)
    p = slurm_p.add_parser("train", help="one training per prompt, as an array (train options after --)")
    _add_train(p)
    _add_slurm_options(p)
    p = slurm_p.add_parser("status", help="report a job folder's tasks")
    p.add_argument("job_dir")
    p.add_argument("--wait", action="store_true", help="wait until no task is queued first")
    p.add_argument("--wait-timeout", type=float, default=None, metavar="S")

    ojd = sub.add_parser("openjd", help="Open Job Description bundles (AWS Deadline Cloud, openjd run)")
    ojd_k = ojd.add_subparsers(dest="kind", required=True)
    p = ojd_k.add_parser("render", help="a render job bundle")
    _add_render(p, out_is_pattern=False)
    p.add_argument("--out", required=True, metavar="BUNDLE", help="folder to write template.yaml into")
    p = ojd_k.add_parser("train", help="a training job bundle (train options after --)")
    _add_train(p)
    p.add_argument("--out", required=True, metavar="BUNDLE", help="folder to write template.yaml into")

    fl = sub.add_parser("flamenco", help="Flamenco job types").add_subparsers(dest="kind", required=True)
    p = fl.add_parser("install", help="copy the DreamWaltz job types into Flamenco Manager's scripts folder")
    p.add_argument("dir", help="the scripts/ folder beside flamenco-manager")
    p.add_argument("--python", default=None, metavar="PY",
                   help="default backend interpreter of the train job type (default: this one)")

    args = parser.parse_args(argv)
    args.train_args = train_args
    from ..farm.frames import FrameRangeError
    from ..farm.units import FarmError

    try:  # no torch here (unlike the other commands): a submit host needs none
        if train_args and args.kind != "train":
            raise CommandError(f"options after -- are train options; `farm {args.system} {args.kind}` takes none")
        return {"slurm": _slurm, "openjd": _openjd, "flamenco": _flamenco}[args.system](args)
    except (CommandError, FarmError, FrameRangeError, OSError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("interrupted (submitted jobs go on running)", file=sys.stderr)
        return 130
