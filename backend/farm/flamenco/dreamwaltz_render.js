// SPDX-License-Identifier: GPL-3.0-or-later
// DreamWaltz render: a shot with DreamWaltz avatars, rendered by Blender with the DreamWaltz add-on
// in chunks of frames. Each task runs backend/farm/render_chunk.py, which checks that every file
// the shot needs resolves on the worker and skips frames already written, so a failed task can
// simply be requeued. Installed by `python -m backend farm flamenco install DIR`.

const JOB_TYPE = {
    label: "DreamWaltz Render",
    description: "Render a shot with DreamWaltz avatars in chunks; frames already written are skipped",
    settings: [
        { key: "frames", type: "string", required: true,
          eval: "f'{C.scene.frame_start}-{C.scene.frame_end}'",
          evalInfo: { showLinkButton: true, description: "Scene frame range" },
          description: "Frames to render, e.g. '1-250' or '1-10,20-30'" },
        { key: "chunk_size", type: "int32", default: 10, propargs: { min: 1, max: 1000 },
          description: "Frames per task" },
        { key: "render_output_path", type: "string", subtype: "file_path", required: true,
          eval: "C.scene.render.filepath",
          description: "Output pattern like Blender's -o: # for frame digits, // for the .blend's folder" },
        { key: "blendfile", type: "string", required: true, visible: false,
          description: "Path of the .blend to render" },
        { key: "blender_cmd", type: "string", default: "{blender}", visible: false },
        { key: "blender_args", type: "string", default: "{blenderArgs}", visible: false },
        { key: "render_chunk_script", type: "string", required: true, default: __RENDER_CHUNK__, visible: "web",
          description: "backend/farm/render_chunk.py of the DreamWaltz add-on, as the workers see it" },
        { key: "backend_python", type: "string", default: "", visible: "web",
          description: "The backend's Python on the workers (empty: what the add-on finds there)" },
        { key: "body_model", type: "string", default: "", visible: "web",
          description: "SMPL-X .npz on the workers (empty: the add-on's setting or the open template)" },
        { key: "path_map", type: "string", default: "", visible: "web",
          description: "FROM=TO;... for paths stored in the shot (DREAMWALTZ_PATH_MAP)" },
    ]
};

function compileJob(job) {
    const settings = job.settings;
    if (settings.chunk_size < 1) {
        throw `chunk_size must be at least 1, got ${settings.chunk_size}`;
    }
    const chunks = frameChunker(settings.frames, settings.chunk_size);
    for (const chunk of chunks) {
        const task = author.Task(`render-${chunk}`, "blender");
        task.addCommand(author.Command("blender-render", {
            exe: settings.blender_cmd,
            exeArgs: settings.blender_args,
            argsBefore: [],
            blendfile: settings.blendfile,
            args: ["--python", settings.render_chunk_script, "--"].concat(chunkArgs(settings, chunk)),
        }));
        job.addTask(task);
    }
}

function chunkArgs(settings, chunk) {
    const args = ["--frames", chunk, "--out", settings.render_output_path];
    const optional = [["--backend-python", settings.backend_python], ["--body-model", settings.body_model],
                      ["--path-map", settings.path_map]];
    for (const [flag, value] of optional) {
        if (value) {
            args.push(flag, value);
        }
    }
    return args;
}
