"""The farm without Slurm: frame chunks, the sbatch scripts' quoting, Open Job Description bundles
run by the real `openjd run`, Flamenco job types compiled against a stand-in of Flamenco's job
API (node), and the add-on's farm check and path map in real Blender. Slurm itself:
tests/test_farm_slurm.py."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from backend.farm.frames import FrameRangeError, chunk_frames, format_frames, parse_frames
from backend.farm.units import FarmError, RENDER_ENTRY, read_prompts, render_job, run_name, train_job

from .blender import run_blender
from .conftest import ROOT, run_backend
from .farm_shot import assert_equals_reference, tiny_train_args

OPENJD = Path(sys.executable).with_name("openjd")
NODE = shutil.which("node")


def test_frame_ranges_chunks_and_their_text():
    assert parse_frames("1-4") == [1, 2, 3, 4]
    assert parse_frames("1..3, 9,7") == [1, 2, 3, 7, 9]
    assert parse_frames("-2-1") == [-2, -1, 0, 1]
    assert [format_frames(c) for c in chunk_frames(parse_frames("1-10"), 4)] == ["1-4", "5-8", "9,10"]
    assert format_frames([1, 2, 3, 9, 11, 12, 13]) == "1-3,9,11-13"
    for chunk in ("1-4", "9,10", "1-3,9"):
        assert format_frames(parse_frames(chunk)) == chunk
    for bad in ("", "a-b", "5-1", "1-2-3"):
        with pytest.raises(FrameRangeError):
            parse_frames(bad)


def test_the_path_map_maps_whole_components_across_systems():
    from dreamwaltz_blender.path_map import PathMapError, map_path, parse

    pairs = parse("P:\\=/mnt/show/;P:\\avatars=/fast/avatars;/Volumes/show/=/mnt/show/")
    assert map_path("P:\\shots\\a\\plate.png", pairs) == "/mnt/show/shots/a/plate.png"
    assert map_path("p:/Avatars/chef", pairs) == "/fast/avatars/chef", "longest FROM first; Windows ignores case"
    assert map_path("/Volumes/show/x.ply", pairs) == "/mnt/show/x.ply"
    assert map_path("/Volumes/showreel/x.ply", pairs) == "/Volumes/showreel/x.ply", "whole components only"
    assert map_path("/mnt/show/a/b", parse('{"/mnt/show": "Q:\\\\show"}')) == "Q:\\show\\a\\b"
    with pytest.raises(PathMapError, match="is not FROM=TO"):
        parse("P:\\ /mnt/show")


def test_bad_farm_inputs_are_one_clear_error(tmp_path, farm_shot):
    empty = tmp_path / "prompts.txt"
    empty.write_text("# nothing yet\n\n")
    with pytest.raises(FarmError, match="holds no prompt"):
        read_prompts(empty)
    with pytest.raises(FarmError, match="--out is set by the farm"):
        train_job(empty, tmp_path / "runs", ["--steps", "3", "--out=x"])
    with pytest.raises(FarmError, match="does not exist"):
        render_job(tmp_path / "none.blend", "1-8", 4)
    proc = run_backend("farm", "slurm", "render", str(farm_shot.blend), "--frames", "8-1", "--chunk", "2")
    assert proc.returncode == 1 and "runs backwards" in proc.stderr
    proc = run_backend("farm", "openjd", "render", str(farm_shot.blend), "--frames", "1-3,7", "--out", str(tmp_path))
    assert proc.returncode == 1 and "one contiguous frame range" in proc.stderr


def test_sbatch_scripts_pass_prompts_and_paths_through_bash_unchanged(tmp_path, farm_shot):
    """Run the generated train script's bash outside Slurm, with an interpreter that prints its
    arguments: every prompt reaches `backend train` exactly as written in the prompts file."""
    from backend.farm import slurm

    prompts = ["a chef's \"white\" hat", "$HOME `whoami` \\ $(echo no) ; rm -rf /", "plain"]
    (tmp_path / "prompts.txt").write_text("\n".join(prompts) + "\n")
    echo = tmp_path / "python3"
    echo.write_text("#!/bin/sh\nexec " + sys.executable + " -c 'import json, sys; print(json.dumps(sys.argv[1:]))' \"$@\"\n")
    echo.chmod(0o755)
    runs = tmp_path / "runs with space"
    job = train_job(tmp_path / "prompts.txt", runs, ["--steps", "3", "--negative-prompt", "it's 'ugly'"], python=str(echo))
    opts = slurm.SlurmOptions(max_parallel=2, gpus_per_task=1, time="1:00:00")
    script = slurm.write_job(job, runs / "farm", opts)
    text = script.read_text()
    assert "#SBATCH --array=0-2%2" in text and "#SBATCH --requeue" in text and "#SBATCH --gres=gpu:1" in text
    assert "#SBATCH --signal=B:TERM@120" in text and "\nexec " in text
    for i, prompt in enumerate(prompts):
        env = {**os.environ, "SLURM_ARRAY_TASK_ID": str(i), "SLURM_JOB_ID": "77", "CUDA_VISIBLE_DEVICES": "3"}
        proc = subprocess.run(["bash", str(script)], cwd=runs / "farm", env=env, capture_output=True, text=True, timeout=30)
        assert proc.returncode == 0, proc.stderr
        argv = json.loads(proc.stdout.splitlines()[-1])
        assert argv == ["-m", "backend", "train", "--prompt", prompt, "--out", str(runs / run_name(i, prompt)),
                        "--resume", "--steps", "3", "--negative-prompt", "it's 'ugly'"]
    records = [json.loads(line) for line in (runs / "farm" / "tasks" / "1.jsonl").read_text().splitlines()]
    assert records[0]["cuda_visible_devices"] == "3" and records[0]["task"] == 1
    render = slurm.render_script(render_job(farm_shot.blend, "1-10", 4, out=str(tmp_path / "o" / "####.png"),
                                            blender="/opt/blender/blender"), tmp_path / "j", slurm.SlurmOptions())
    assert "CHUNKS=(1-4 5-8 9,10)" in render and f"--python {RENDER_ENTRY} --" in render
    assert "--signal" not in render


def test_a_train_task_on_several_gpus_trains_its_avatar_view_parallel(tmp_path):
    """--gpus-per-task 2: the task asks Slurm for two GPUs and runs the training under torchrun
    with one rank per GPU (the command tests/test_train_distributed.py runs for real)."""
    (tmp_path / "prompts.txt").write_text("a chef\n")
    echo = tmp_path / "python3"
    echo.write_text("#!/bin/sh\nexec " + sys.executable + " -c 'import json, sys; print(json.dumps(sys.argv[1:]))' \"$@\"\n")
    echo.chmod(0o755)
    runs = tmp_path / "runs"
    proc = run_backend("farm", "slurm", "train", str(tmp_path / "prompts.txt"), "--runs", str(runs),
                       "--python", str(echo), "--gpus-per-task", "2", "--", "--views", "4", check=True)
    script = Path(proc.stdout.strip())
    assert "#SBATCH --gres=gpu:2" in script.read_text()
    env = {**os.environ, "SLURM_ARRAY_TASK_ID": "0", "SLURM_JOB_ID": "78", "CUDA_VISIBLE_DEVICES": "0,1"}
    ran = subprocess.run(["bash", str(script)], cwd=script.parent, env=env, capture_output=True, text=True, timeout=30)
    assert ran.returncode == 0, ran.stderr
    assert json.loads(ran.stdout.splitlines()[-1]) == [
        "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", "-m", "backend", "train",
        "--prompt", "a chef", "--out", str(runs / run_name(0, "a chef")), "--resume", "--views", "4"]


@pytest.mark.skipif(not OPENJD.exists(), reason="openjd-cli is not installed (requirements.txt)")
def test_openjd_render_bundle_runs_and_maps_the_shots_windows_paths(tmp_path, farm_shot):
    out = tmp_path / "frames"
    proc = run_backend("farm", "openjd", "render", str(farm_shot.mapped_blend), "--frames", "1-4", "--chunk", "2",
                       "--pattern", str(out / "####.png"), "--blender", sys.executable, "--path-map", farm_shot.path_map,
                       "--out", str(tmp_path / "bundle"), check=True)
    template = Path(proc.stdout.strip())
    assert json.loads(template.read_text())["jobEnvironments"][0]["variables"]["DREAMWALTZ_PATH_MAP"] == farm_shot.path_map
    run = subprocess.run([str(OPENJD), "run", str(template), "--job-param", f"file://{template.parent / 'job_params.json'}"],
                         capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stdout[-4000:] + run.stderr[-2000:]
    assert "2 rendered" in run.stdout
    assert_equals_reference(farm_shot, out, range(1, 5))


@pytest.mark.skipif(not OPENJD.exists(), reason="openjd-cli is not installed (requirements.txt)")
def test_openjd_train_bundle_runs_one_training_per_prompt(tmp_path, farm_tiny_models):
    from backend.avatar import load_avatar

    prompts = tmp_path / "prompts.txt"
    prompts.write_text("a chef\na knight in armour\n")
    runs = tmp_path / "runs"
    proc = run_backend("farm", "openjd", "train", str(prompts), "--runs", str(runs), "--out", str(tmp_path / "bundle"),
                       "--", *tiny_train_args(farm_tiny_models, steps=2), check=True)
    template = Path(proc.stdout.strip())
    run = subprocess.run([str(OPENJD), "run", str(template), "--job-param", f"file://{template.parent / 'job_params.json'}"],
                         capture_output=True, text=True, timeout=600, cwd=tmp_path)
    assert run.returncode == 0, run.stdout[-4000:] + run.stderr[-2000:]
    for i, prompt in enumerate(["a chef", "a knight in armour"]):
        avatar = load_avatar(runs / run_name(i, prompt) / "avatar")
        assert avatar.meta.prompt == prompt
    # a task run again (a resubmitted job) returns at once with the avatar it made
    done = runs / run_name(0, "a chef") / "avatar"
    stamps = {p.name: p.stat().st_mtime_ns for p in done.iterdir()}
    again = run_backend("train", "--prompt", "a chef", "--out", str(done.parent), "--resume",
                        *tiny_train_args(farm_tiny_models, steps=2), check=True)
    assert again.stdout.strip().splitlines()[-1] == str(done)
    assert {p.name: p.stat().st_mtime_ns for p in done.iterdir()} == stamps, "the finished avatar is not made again"


def _compile(job_type: Path, settings: dict) -> subprocess.CompletedProcess:
    return subprocess.run([NODE or "node", str(ROOT / "tests" / "flamenco_standin.js"), str(job_type), json.dumps(settings)],
                          capture_output=True, text=True, timeout=60)


@pytest.mark.skipif(NODE is None, reason="node is not installed")
def test_flamenco_job_types_compile_into_the_farm_units(tmp_path):
    from backend.farm.render_chunk import parser as chunk_parser

    proc = run_backend("farm", "flamenco", "install", str(tmp_path / "scripts"), "--python", "/opt/py/bin/python3",
                       check=True)
    render_js, train_js = (Path(p) for p in proc.stdout.split())
    assert {render_js.name, train_js.name} == {"dreamwaltz_render.js", "dreamwaltz_train.js"}

    compiled = _compile(render_js, {"frames": "1-10", "chunk_size": 4, "render_output_path": "/r/shot_####.png",
                                    "blendfile": "/s/shot.blend", "path_map": "P:\\=/mnt/p/"})
    assert compiled.returncode == 0, compiled.stderr
    tasks = json.loads(compiled.stdout)["tasks"]
    assert [t["name"] for t in tasks] == ["render-1-4", "render-5-8", "render-9,10"]
    covered = []
    for task in tasks:
        (cmd,) = task["commands"]
        p = cmd["parameters"]
        assert task["type"] == "blender" and cmd["name"] == "blender-render"
        assert (p["exe"], p["exeArgs"], p["blendfile"]) == ("{blender}", "{blenderArgs}", "/s/shot.blend")
        assert p["args"][:3] == ["--python", str(RENDER_ENTRY), "--"]
        args = chunk_parser().parse_args(p["args"][3:])
        assert args.out == "/r/shot_####.png" and args.path_map == "P:\\=/mnt/p/"
        covered += parse_frames(args.frames)
    assert covered == list(range(1, 11)), "every frame in exactly one task"

    prompts = ["a chef", "# skipped", "A Knight, in armour!", "  ", "ÜBER-cool---robot__"]
    compiled = _compile(train_js, {"prompts": "\n".join(prompts), "runs_dir": "/runs", "train_args": "--steps 3 --seed 2"})
    assert compiled.returncode == 0, compiled.stderr
    tasks = json.loads(compiled.stdout)["tasks"]
    kept = read_prompts_text(prompts)
    assert [t["name"] for t in tasks] == [f"train-{run_name(i, p)}" for i, p in enumerate(kept)]
    for i, (task, prompt) in enumerate(zip(tasks, kept)):
        (cmd,) = task["commands"]
        p = cmd["parameters"]
        assert cmd["name"] == "exec" and p["exe"] == "/opt/py/bin/python3"
        assert p["args"][2:] == ["train", "--prompt", prompt, "--out", f"/runs/{run_name(i, prompt)}", "--resume",
                                 "--steps", "3", "--seed", "2"]
    # the launcher finds the backend from any working folder
    launcher = tasks[0]["commands"][0]["parameters"]["args"][:2]
    proc = subprocess.run([sys.executable, *launcher, "farm", "--help"], cwd=tmp_path, capture_output=True, text=True,
                          timeout=60, env={k: v for k, v in os.environ.items() if k != "PYTHONPATH"})
    assert proc.returncode == 0 and "farm slurm render" in proc.stdout

    bad = _compile(train_js, {"prompts": "a chef", "runs_dir": "/runs", "train_args": "--out /x"})
    assert bad.returncode == 1 and "--out is set for each task" in bad.stderr
    missing = _compile(render_js, {"frames": "1-10"})
    assert missing.returncode == 1 and "required setting" in missing.stderr


def read_prompts_text(lines: list[str]) -> list[str]:
    return [p.strip() for p in lines if p.strip() and not p.strip().startswith("#")]


def test_farm_check_lists_what_the_shot_needs_and_the_path_map_resolves_it(tmp_path, farm_shot):
    report = tmp_path / "check.json"
    chunk = subprocess.run([sys.executable, str(RENDER_ENTRY), str(farm_shot.mapped_blend), "--frames", "1-2",
                            "--out", str(tmp_path / "none" / "####.png")], capture_output=True, text=True, timeout=300)
    assert chunk.returncode == 2, chunk.stderr[-3000:]
    assert "P:\\dw\\assets\\avatar" in chunk.stderr and not (tmp_path / "none").exists()
    result = run_blender(f"""
        import json, os
        from dreamwaltz_blender import farm
        def check(**kw):
            try:
                bpy.ops.dreamwaltz.farm_check(**kw)
                return None
            except RuntimeError as exc:
                return str(exc)
        def state():
            return sorted((o.name, str(o.get("dreamwaltz_avatar") or o.get("dreamwaltz_ply") or ""))
                          for o in bpy.data.objects) + [c.filepath for c in [*bpy.data.movieclips, *bpy.data.images]]
        bpy.ops.wm.open_mainfile(filepath={str(farm_shot.blend)!r})
        result["plain"] = check(report_path={str(report)!r})
        bpy.ops.wm.open_mainfile(filepath={str(farm_shot.mapped_blend)!r})
        before = state()
        result["unmapped"] = check()
        result["unchanged"] = state() == before
        os.environ["DREAMWALTZ_PATH_MAP"] = {farm_shot.path_map!r}
        result["mapped"] = check()
        result["files"] = [vars(f) for f in farm.shot_files(bpy.context)]
        result["changed"] = farm.apply_path_map(bpy.data)
        # a relative path that depends on the working folder, and a PLY nobody copied
        bpy.data.movieclips[0].filepath = "plates/plate_0001.png"
        statue = [o for o in bpy.data.objects if "dreamwaltz_ply" in o][0]
        statue["dreamwaltz_ply"] = {str(tmp_path / "gone.ply")!r}
        result["broken"] = check()
        scene = bpy.context.scene
        if hasattr(scene.render.image_settings, "media_type"):  # Blender 5: movies are a media type
            scene.render.image_settings.media_type = "VIDEO"
        scene.render.image_settings.file_format = "FFMPEG"
        try:
            farm.render_frames(scene, [1], {str(tmp_path / "movie")!r})
        except farm.FarmError as exc:
            result["movie"] = str(exc)
    """, tmp_path)
    assert result["plain"] is None
    listed = {(f["kind"], f["resolved"]) for f in json.loads(report.read_text())}
    assets = farm_shot.assets
    assert {("avatar", str(assets / "avatar")), ("gaussian ply", str(assets / "statue.ply")),
            ("plate", str(assets / "plate" / "plate_0001.png")), ("backend python", sys.executable)} <= listed
    assert any(kind == "body model" for kind, _ in listed)
    unmapped = result["unmapped"]
    assert "4 of 6 files" in unmapped and "P:\\dw\\assets\\avatar" in unmapped and "DREAMWALTZ_PATH_MAP" in unmapped
    assert result["unchanged"], "the check changes nothing in the scene"
    assert result["mapped"] is None
    resolved = {f["kind"]: f["resolved"] for f in result["files"]}
    assert resolved["avatar"] == str(assets / "avatar") and resolved["plate"] == str(assets / "plate" / "plate_0001.png")
    assert [new for _, new in result["changed"]] == [str(assets / "plate" / "plate_0001.png")] * 2
    broken = result["broken"]
    assert "2 of 6 files" in broken and "gone.ply (does not exist)" in broken and "working folder" in broken
    assert "movie" in result["movie"] and not (tmp_path / "movie").exists()
