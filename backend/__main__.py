"""`python -m backend <command>`: the backend's command line (render nodes, scripts, CI).

Each command lives in its own module and is imported only when used, so `--help` and the
server's start stay fast and torch is loaded only by commands that need it.
"""

from __future__ import annotations

import importlib
import sys

COMMANDS = {
    "template": ("backend.cli.template_cmd", "write the open SMPL-X-layout template body model"),
    "avatar": ("backend.cli.avatar_cmd", "make avatars (avatar init)"),
    "render": ("backend.cli.render_cmd", "render an avatar on a motion to PNG frames or an MP4"),
    "export-ply": ("backend.cli.export_cmd", "write an avatar (canonical or posed) as a 3DGS .ply"),
    "motion": ("backend.motion.cli", "inspect and convert motion files"),
    "serve": ("backend.server.cli", "run the backend server on stdin/stdout (for the Blender add-on)"),
    "demo": ("backend.cli.demo_cmd", "the end-to-end demo: avatar, dance, plate, Blender, video"),
    "train": ("backend.cli.train_cmd", "create an avatar from a text prompt (score distillation)"),
    "dev": ("backend.cli.dev_cmd", "developer tools (tiny random-weight diffusion models)"),
    "farm": ("backend.cli.farm_cmd", "shots and avatar batches on Slurm, Open Job Description and Flamenco"),
}


def _usage() -> str:
    lines = ["usage: python -m backend <command> [options]", "", "commands:"]
    lines += [f"  {name:<11} {help_}" for name, (_, help_) in COMMANDS.items()]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help"):
        print(_usage())
        return 0
    name, rest = argv[0], argv[1:]
    if name not in COMMANDS:
        print(f"error: unknown command {name!r}\n\n{_usage()}", file=sys.stderr)
        return 2
    try:
        module = importlib.import_module(COMMANDS[name][0])
    except ModuleNotFoundError as exc:
        if exc.name and exc.name.startswith("backend"):
            print(f"error: the command {name!r} is not available in this build ({exc.name} is missing)",
                  file=sys.stderr)
            return 2
        raise
    return int(module.main(rest) or 0)


if __name__ == "__main__":
    sys.exit(main())
