"""Open Job Description job bundles (what AWS Deadline Cloud runs; `openjd run` runs them here).

A bundle is a folder with `template.json` (jobtemplate-2023-09) and the values it was made
with, twice: `parameter_values.json` in Deadline Cloud's format (`deadline bundle submit`) and
`job_params.json` as `openjd run --job-param file://...` reads them (PATH parameters have no
defaults: the specification allows only paths inside the bundle there). The render template's job
parameters are the shot, its first and last frame and the chunk size, so a submitter can change
them; each task renders `ChunkSize` frames from its start frame. The train template lists the
prompts as task parameters, one task per prompt. Tasks are cancelled with SIGTERM first
(NOTIFY_THEN_TERMINATE), so a cancelled training saves its checkpoint.
"""

from __future__ import annotations

import json
from pathlib import Path

from ..files import write_text_atomic
from .units import BACKEND_ROOT, RENDER_ENTRY, FarmError, RenderJob, TrainJob, is_python

SPEC = "jobtemplate-2023-09"


def _check_text(value: str, what: str) -> str:
    if "{{" in value or "}}" in value:
        raise FarmError(f"{what} {value!r} contains {{{{ or }}}}, which Open Job Description reads as a format string")
    return value


def _environment(name: str, env: dict[str, str]) -> list[dict]:
    return [{"name": name, "variables": dict(env)}] if env else []


def render_template(job: RenderJob) -> dict:
    frames = job.frames
    if frames != list(range(frames[0], frames[-1] + 1)):
        raise FarmError("an Open Job Description render takes one contiguous frame range (A-B); "
                        "submit other ranges as separate bundles")
    bpy_runner = is_python(job.blender)
    exe_param = "BpyPython" if bpy_runner else "Blender"
    chunk_args = ["--frames", "{{Task.Param.ChunkStart}}-{{Param.LastFrame}}", "--count", "{{Param.ChunkSize}}",
                  "--out", "{{Param.OutputPattern}}"]
    if bpy_runner:
        args = [str(RENDER_ENTRY), "{{Param.ShotFile}}"] + chunk_args
    else:
        args = ["-b", "{{Param.ShotFile}}", "--python", str(RENDER_ENTRY), "--"] + chunk_args
    template = {
        "specificationVersion": SPEC,
        "name": _check_text(f"DreamWaltz render {Path(job.shot).stem}", "the shot's name")[:128],
        "description": "Renders a shot with the DreamWaltz add-on in chunks; frames already written are skipped.",
        "parameterDefinitions": [
            {"name": "ShotFile", "type": "PATH", "objectType": "FILE", "dataFlow": "IN", "default": job.shot,
             "description": "The .blend to render"},
            {"name": "FirstFrame", "type": "INT", "default": frames[0]},
            {"name": "LastFrame", "type": "INT", "default": frames[-1]},
            {"name": "ChunkSize", "type": "INT", "default": job.chunk, "minValue": 1,
             "description": "Frames per task"},
            {"name": "OutputPattern", "type": "STRING", "default": _check_text(job.out or "", "the output pattern"),
             "description": "Like Blender's -o (# for digits, // for the .blend's folder); empty: the shot's own"},
            {"name": exe_param, "type": "STRING", "default": job.blender,
             "description": "A Python with the bpy module" if bpy_runner else "The Blender executable"},
        ],
        "steps": [{
            "name": "Render",
            "parameterSpace": {"taskParameterDefinitions": [
                {"name": "ChunkStart", "type": "INT",
                 "range": "{{Param.FirstFrame}}-{{Param.LastFrame}}:{{Param.ChunkSize}}"}]},
            "script": {"actions": {"onRun": {
                "command": "{{Param.%s}}" % exe_param, "args": args,
                "cancelation": {"mode": "NOTIFY_THEN_TERMINATE", "notifyPeriodInSeconds": 30}}}},
        }],
    }
    env = _environment("DreamWaltzRender", job.env)
    if env:
        template["jobEnvironments"] = env
    return template


def train_template(job: TrainJob) -> dict:
    train_args = [_check_text(a, "the train option") for a in job.train_args]
    template = {
        "specificationVersion": SPEC,
        "name": "DreamWaltz train",
        "description": "One avatar per prompt (python -m backend train --resume: starts, resumes or returns at once).",
        "parameterDefinitions": [
            {"name": "RunsDir", "type": "PATH", "objectType": "DIRECTORY", "dataFlow": "OUT", "default": job.runs_dir,
             "description": "One run folder per prompt is made here"},
            {"name": "Python", "type": "STRING", "default": job.python,
             "description": "A Python with torch and the backend's requirements"},
            {"name": "BackendRoot", "type": "PATH", "objectType": "DIRECTORY", "dataFlow": "IN",
             "default": str(BACKEND_ROOT), "description": "The folder that holds the backend package"},
        ],
        "jobEnvironments": [{"name": "DreamWaltzBackend", "variables": {"PYTHONPATH": "{{Param.BackendRoot}}"}}],
        "steps": [{
            "name": "Train",
            "parameterSpace": {
                "taskParameterDefinitions": [
                    {"name": "Prompt", "type": "STRING", "range": [_check_text(r.prompt, "the prompt") for r in job.runs]},
                    {"name": "Run", "type": "STRING", "range": [r.name for r in job.runs]}],
                "combination": "(Prompt, Run)"},
            "script": {"actions": {"onRun": {
                "command": "{{Param.Python}}",
                "args": ["-m", "backend", "train", "--prompt", "{{Task.Param.Prompt}}",
                         "--out", "{{Param.RunsDir}}/{{Task.Param.Run}}", "--resume"] + train_args,
                "cancelation": {"mode": "NOTIFY_THEN_TERMINATE", "notifyPeriodInSeconds": 120}}}},
        }],
    }
    return template


def _write(template: dict, bundle: str | Path) -> Path:
    """template.json (PATH parameters without defaults) and the values in both formats."""
    folder = Path(bundle).absolute()
    values = {}
    for param in template["parameterDefinitions"]:
        if "default" in param:
            values[param["name"]] = param["default"]
            if param["type"] == "PATH":
                del param["default"]
    path = folder / "template.json"
    write_text_atomic(path, json.dumps(template, indent=2))
    write_text_atomic(folder / "job_params.json", json.dumps(values, indent=2))
    write_text_atomic(folder / "parameter_values.json", json.dumps(
        {"parameterValues": [{"name": k, "value": v} for k, v in values.items()]}, indent=2))
    return path


def write_render_bundle(job: RenderJob, bundle: str | Path) -> Path:
    return _write(render_template(job), bundle)


def write_train_bundle(job: TrainJob, bundle: str | Path) -> Path:
    return _write(train_template(job), bundle)
