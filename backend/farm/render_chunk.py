"""Render one chunk of a shot's frames on a farm worker, with the DreamWaltz add-on enabled.

    blender -b shot.blend --python render_chunk.py -- --frames 1-50 [--out //render/####.png]
    python render_chunk.py shot.blend --frames 1-50 [--out PATTERN]     # a Python with `bpy`

What `blender -b shot.blend -s 1 -e 50 -a` does, made safe to retry: it first checks that every
file the shot needs resolves on this worker (`dreamwaltz.farm_check`, after the path map in
$DREAMWALTZ_PATH_MAP), then renders each frame that is not written yet to a temporary file and
renames it into place, so a killed task leaves whole frames only and its retry renders the rest.
Exit status: 0 done, 1 a render error, 2 the shot needs files this worker cannot find.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent


def _frames_module() -> Any:
    spec = importlib.util.spec_from_file_location("_dreamwaltz_farm_frames", HERE / "frames.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="render_chunk.py", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("shot", nargs="?", help="the .blend (only when run by a Python with bpy; Blender opens it itself)")
    p.add_argument("--frames", required=True, help="frames to render: 1-50, 7, 1-3,9 or Blender's 1..50")
    p.add_argument("--count", type=int, default=None, help="render only the first N of these frames (how an Open "
                                                         "Job Description task makes its chunk from its start frame)")
    p.add_argument("--out", default=None, help="output pattern like Blender's -o (# for digits, // for the .blend's "
                                               "folder); default: the shot's own output path")
    p.add_argument("--backend-python", default=None, metavar="PY", help="the backend's interpreter ($DREAMWALTZ_PYTHON)")
    p.add_argument("--body-model", default=None, metavar="F", help="SMPL-X .npz ($DREAMWALTZ_SMPLX)")
    p.add_argument("--path-map", default=None, metavar="MAP", help="FROM=TO;... ($DREAMWALTZ_PATH_MAP)")
    p.add_argument("--result", default=None, help="write a JSON summary (frames written, skipped) here")
    p.add_argument("--no-check", action="store_true", help="render without the farm check first")
    return p


def _argv() -> tuple[list[str], bool]:
    """(arguments, inside Blender): after `--` when Blender runs this script, else the usual."""
    if "--" in sys.argv:
        return sys.argv[sys.argv.index("--") + 1:], True
    return sys.argv[1:], False


def _addon() -> Any:
    """The add-on's farm module: the enabled add-on (an installed extension), else the checkout
    this script belongs to, enabled now."""
    import addon_utils  # noqa: F401  (Blender's module; imported after bpy)
    import bpy

    for name in bpy.context.preferences.addons.keys():
        if name == "dreamwaltz_blender" or name.endswith(".dreamwaltz"):
            return importlib.import_module(f"{name}.farm")
    root = HERE.parents[1]
    if not (root / "dreamwaltz_blender" / "__init__.py").is_file():
        raise RuntimeError("the DreamWaltz add-on is not enabled in this Blender: install and enable it on the "
                           "worker (or run this script from a checkout of the project)")
    if str(root) not in sys.path:
        sys.path.insert(0, str(root))
    if addon_utils.enable("dreamwaltz_blender", default_set=True, handle_error=None) is None:
        raise RuntimeError(f"the DreamWaltz add-on in {root} did not enable")
    return importlib.import_module("dreamwaltz_blender.farm")


def _write_result(path: str | None, result: dict) -> None:
    if not path:
        return
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_name(f".{target.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(result, indent=1))
    os.replace(tmp, target)


def main() -> int:
    argv, in_blender = _argv()
    args = parser().parse_args(argv)
    frames_mod = _frames_module()
    for value, env in ((args.backend_python, "DREAMWALTZ_PYTHON"), (args.body_model, "DREAMWALTZ_SMPLX"),
                       (args.path_map, "DREAMWALTZ_PATH_MAP")):
        if value:
            os.environ[env] = value
    result: dict[str, Any] = {"frames": args.frames, "host": os.uname().nodename if hasattr(os, "uname") else "",
                              "cuda_visible_devices": os.environ.get("CUDA_VISIBLE_DEVICES"),
                              "written": [], "skipped": [], "error": None}
    t0 = time.time()
    farm = None
    try:
        frames = frames_mod.parse_frames(args.frames)
        if args.count is not None:
            frames = frames[:max(args.count, 0)]
        import bpy

        farm = _addon()
        if not in_blender:
            if not args.shot:
                raise RuntimeError("name the .blend to render (python render_chunk.py SHOT.blend --frames ...)")
            bpy.ops.wm.open_mainfile(filepath=str(Path(args.shot).resolve()))
        scene = bpy.context.scene
        farm.apply_path_map(bpy.data)
        if not args.no_check:
            problems = [f for f in farm.shot_files(bpy.context) if f.problem]
            if problems:
                result["error"] = "missing files: " + "; ".join(f"{f.kind} {f.resolved}: {f.problem}" for f in problems)
                print(farm.format_files(problems), file=sys.stderr)
                print(f"render_chunk: {len(problems)} file(s) the shot needs do not resolve on this worker; "
                      "nothing rendered", file=sys.stderr)
                return 2
        written, skipped = farm.render_frames(scene, frames, args.out)
        result.update(written=written, skipped=skipped)
        print(f"render_chunk: frames {args.frames}: {len(written)} rendered, {len(skipped)} already written "
              f"({time.time() - t0:.1f} s)", file=sys.stderr)
        return 0
    except Exception as exc:  # one line for the farm's log; the traceback above it
        import traceback

        traceback.print_exc()
        result["error"] = str(exc)
        print(f"render_chunk: frames {args.frames} failed: {exc}", file=sys.stderr)
        return 1
    finally:
        result["seconds"] = round(time.time() - t0, 2)
        _write_result(args.result, result)
        if farm is not None:
            farm.session.shutdown()  # the backend process this render started


if __name__ == "__main__":
    code = main()
    sys.stdout.flush()
    sys.stderr.flush()
    sys.exit(code)
