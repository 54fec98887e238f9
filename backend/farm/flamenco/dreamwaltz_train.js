// SPDX-License-Identifier: GPL-3.0-or-later
// DreamWaltz train: one avatar per prompt. Each task runs `python -m backend train --prompt P
// --out RUNS/NNN-slug --resume`, which starts the run, resumes it from its checkpoint or returns
// at once when the avatar exists, so tasks can be requeued and jobs resubmitted. The run folders
// are named as `python -m backend farm slurm train` names them. Installed by
// `python -m backend farm flamenco install DIR`.

const JOB_TYPE = {
    label: "DreamWaltz Train",
    description: "Create one DreamWaltz avatar per prompt (skeleton-guided score distillation)",
    settings: [
        { key: "prompts", type: "string", required: true,
          description: "One prompt per line (lines starting with # are skipped)" },
        { key: "runs_dir", type: "string", subtype: "dir_path", required: true,
          description: "One run folder per prompt is made here" },
        { key: "train_args", type: "string", default: "",
          description: "More options of `backend train`, separated by spaces, e.g. '--preset draft --seed 3'" },
        { key: "python", type: "string", required: true, default: __PYTHON__, visible: "web",
          description: "A Python with torch and the backend's requirements, on the workers" },
        { key: "backend_root", type: "string", required: true, default: __BACKEND_ROOT__, visible: "web",
          description: "The folder that holds the backend package, as the workers see it" },
    ]
};

const MANAGED = ["--prompt", "--out", "--resume"];

function compileJob(job) {
    const settings = job.settings;
    const prompts = settings.prompts.split("\n").map((p) => p.trim()).filter((p) => p && !p.startsWith("#"));
    if (prompts.length == 0) {
        throw "the prompts setting holds no prompt (one per line)";
    }
    const extra = settings.train_args.split(/\s+/).filter((a) => a);
    for (const arg of extra) {
        if (MANAGED.indexOf(arg.split("=")[0]) >= 0) {
            throw `${arg.split("=")[0]} is set for each task; leave it out of train_args`;
        }
    }
    // `python -c` puts the backend on sys.path (Flamenco's exec command sets no environment).
    const launcher = "import runpy, sys; sys.path.insert(0, " + JSON.stringify(settings.backend_root) +
                     "); runpy.run_module('backend', run_name='__main__', alter_sys=True)";
    prompts.forEach((prompt, i) => {
        const name = runName(i, prompt);
        const task = author.Task(`train-${name}`, "misc");
        task.addCommand(author.Command("exec", {
            exe: settings.python,
            args: ["-c", launcher, "train", "--prompt", prompt, "--out", path.join(settings.runs_dir, name),
                   "--resume"].concat(extra),
        }));
        job.addTask(task);
    });
}

// The same name as backend/farm/units.py run_name(): NNN-slug.
function runName(index, prompt) {
    let slug = prompt.toLowerCase().replace(/[^a-z0-9]+/g, "-").replace(/^-+|-+$/g, "");
    slug = slug.substring(0, 40).replace(/-+$/, "");
    return String(index).padStart(3, "0") + "-" + (slug || "avatar");
}
