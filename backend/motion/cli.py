"""`motion info` / `motion convert`: the command-line face of the motion loaders.

    python -m backend motion info FILE [--fps F]
    python -m backend motion convert FILE --out OUT.npz [--fps F] [--start S] [--end E]

(also runnable as ``python -m backend.motion.cli ...``). ``info`` prints ONE JSON object;
a refused file exits with status 1 and the reason on stderr. A body model is loaded only
when it is needed (hands stored as PCA / mean-relative) or for ``convert`` (exact pelvis
pivot when the world is rotated); ``--body-model`` or $DREAMWALTZ_SMPLX picks the file,
otherwise the open template is used.
"""

from __future__ import annotations

import argparse
import json
import sys
import warnings

from .errors import MotionError
from .loader import load_motion, save_motion


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="motion", description="Inspect and convert motion files.")
    sub = p.add_subparsers(dest="command", required=True)

    def common(sp):
        sp.add_argument("file", help="motion file (AMASS .npz, AIST++/TalkSHOW .pkl, Motion-X/265 .npy, "
                                     "ReEnact .json, TRAM file or folder, DreamWaltz .npz)")
        sp.add_argument("--fps", type=float, help="resample to this frame rate (slerp; duration kept)")
        sp.add_argument("--source-fps", type=float, help="override the file's frame rate")
        sp.add_argument("--repair", action="store_true", help="interpolate over NaN/inf frames instead of refusing")
        sp.add_argument("--up-axis", help="override the source up axis (Y, Z, -Y, ...)")
        sp.add_argument("--body-model", help="SMPL-X .npz to use (default: $DREAMWALTZ_SMPLX or the open template)")

    info = sub.add_parser("info", help="print one JSON object describing the motion")
    common(info)
    conv = sub.add_parser("convert", help="write the project's motion .npz")
    common(conv)
    conv.add_argument("--out", required=True, help="output .npz")
    conv.add_argument("--start", type=float, help="first frame (or second, with --unit seconds) to keep")
    conv.add_argument("--end", type=float, help="end (exclusive) frame or second")
    conv.add_argument("--unit", choices=("frames", "seconds"), default="frames",
                      help="unit of --start/--end, in the OUTPUT frame rate (default frames)")
    return p


def _body_model(path):
    """The project's BodyModel (imports torch: only called when a body model is needed)."""
    try:
        from ..body import BodyModel
    except ImportError as exc:   # e.g. an interpreter without torch
        raise MotionError(None, None, message=f"a body model is needed but cannot be loaded here ({exc})") from None
    return BodyModel.load(path)


def _load(args, want_body_model: bool):
    notes: list[str] = []
    kw = dict(fps=args.fps, source_fps=args.source_fps, repair=args.repair, up_axis=args.up_axis, notes=notes)
    bm = None
    if want_body_model:
        try:
            bm = _body_model(args.body_model)
        except MotionError:
            if args.body_model:
                raise
    try:
        return load_motion(args.file, body_model=bm, **kw), notes
    except MotionError as exc:
        if not exc.needs_body_model or bm is not None:
            raise
    notes.clear()
    return load_motion(args.file, body_model=_body_model(args.body_model), **kw), notes


def describe(motion, path, notes=()) -> dict:
    """The JSON-able summary `motion info` prints."""
    cam = motion.camera
    return {
        "path": str(path),
        "format": motion.source_format,
        "frames": motion.num_frames,
        "fps": motion.fps,
        "duration": motion.duration,
        "joints": 55,
        "has_expression": motion.num_expression > 0,
        "expression_coefficients": motion.num_expression,
        "has_camera": cam is not None,
        "camera_size": [cam.width, cam.height] if cam is not None else None,
        "betas": None if motion.betas is None else int(len(motion.betas)),
        "gender": motion.gender,
        "source_up_axis": motion.source_up_axis,
        "notes": list(notes),
    }


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["motion"]:
        argv = argv[1:]
    args = _parser().parse_args(argv)
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            motion, notes = _load(args, want_body_model=args.command == "convert")
        for w in caught:
            print(f"warning: {w.message}", file=sys.stderr)
        if args.command == "info":
            print(json.dumps(describe(motion, args.file, notes)))
            return 0
        if args.start is not None or args.end is not None:
            motion = motion.trim(args.start, args.end, unit=args.unit)
        save_motion(motion, args.out)
        summary = describe(motion, args.out, notes)
        summary["format"] = "dreamwaltz"
        summary["source_format"] = motion.source_format
        print(json.dumps(summary))
        return 0
    except MotionError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    except OSError as exc:
        from ..files import describe_os_error

        print(f"error: {describe_os_error(exc)}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
