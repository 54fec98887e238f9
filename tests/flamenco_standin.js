// A small stand-in for Flamenco Manager's job compiler (written for these tests, not Flamenco's
// code): it loads a job-type script in a fresh JavaScript context with the globals Flamenco gives
// job compilers (author.Task, author.Command, frameChunker, path, print, alert,
// formatTimestampLocal), fills the job's settings from JOB_TYPE's defaults, checks required
// settings and their types as the Manager does before compiling, calls compileJob(job) and prints
// the authored tasks as JSON.
//
//   node tests/flamenco_standin.js JOB_TYPE.js '{"setting": "value", ...}'
"use strict";

const fs = require("fs");
const vm = require("vm");
const posix = require("path").posix;

function explodeFrames(range) {
    const frames = new Set();
    const text = range.trim().split("..").join("-");
    if (!text) throw new Error(`invalid range "${range}": empty range`);
    for (const part of text.split(",")) {
        const ends = part.split("-").map((s) => s.trim());
        if (ends.length > 2 || ends.some((s) => !/^\d+$/.test(s))) {
            throw new Error(`invalid range "${range}": ${part}`);
        }
        const first = Number(ends[0]);
        const last = Number(ends[ends.length - 1]);
        for (let f = first; f <= last; f++) frames.add(f);
    }
    return Array.from(frames).sort((a, b) => a - b);
}

function mergeFrames(frames) {
    const parts = [];
    let start = frames[0];
    let prev = frames[0];
    const flush = () => {
        if (start === prev) parts.push(String(start));
        else if (start + 1 === prev) parts.push(String(start), String(prev));
        else parts.push(`${start}-${prev}`);
    };
    for (const f of frames.slice(1)) {
        if (f > prev + 1) {
            flush();
            start = f;
        }
        prev = f;
    }
    flush();
    return parts.join(",");
}

function frameChunker(range, chunkSize) {
    if (!(chunkSize >= 1)) throw new Error(`invalid chunk size, must be positive number: ${chunkSize}`);
    const frames = explodeFrames(range);
    const chunks = [];
    for (let i = 0; i < frames.length; i += chunkSize) chunks.push(mergeFrames(frames.slice(i, i + chunkSize)));
    return chunks;
}

class AuthoredTask {
    constructor(name, type) {
        this.name = name;
        this.type = type;
        this.priority = 50;
        this.commands = [];
        this.dependencies = [];
    }
    addCommand(cmd) {
        if (!(cmd instanceof AuthoredCommand)) throw new TypeError("addCommand() takes an author.Command");
        this.commands.push(cmd);
    }
    addDependency(task) {
        if (!(task instanceof AuthoredTask)) throw new TypeError("addDependency() takes an author.Task");
        this.dependencies.push(task);
    }
}

class AuthoredCommand {
    constructor(name, parameters) {
        this.name = name;
        this.parameters = parameters;
    }
}

const SETTING_TYPES = {
    string: (v) => typeof v === "string",
    int32: (v) => Number.isInteger(v) && v >= -(2 ** 31) && v < 2 ** 31,
    float: (v) => typeof v === "number",
    bool: (v) => typeof v === "boolean",
};

function prepareSettings(jobType, given) {
    const settings = {};
    const known = new Set();
    for (const s of jobType.settings) {
        if (!s.key || !SETTING_TYPES[s.type]) throw new Error(`setting ${JSON.stringify(s)} has no key or an unknown type`);
        known.add(s.key);
        let value = s.key in given ? given[s.key] : s.default;
        if (value === undefined) {
            if (s.required) throw new Error(`required setting "${s.key}" is missing`);
            continue;
        }
        if (!SETTING_TYPES[s.type](value)) throw new Error(`setting "${s.key}" must be ${s.type}, got ${JSON.stringify(value)}`);
        if (s.choices && s.choices.indexOf(value) < 0) throw new Error(`setting "${s.key}" must be one of ${s.choices}`);
        settings[s.key] = value;
    }
    for (const key of Object.keys(given)) {
        if (!known.has(key)) throw new Error(`setting "${key}" is not one of the job type's`);
    }
    return settings;
}

function compile(scriptPath, given) {
    const tasks = [];
    const log = [];
    const context = vm.createContext({
        author: { Task: (name, type) => new AuthoredTask(name, type), Command: (n, p) => new AuthoredCommand(n, p) },
        frameChunker,
        formatTimestampLocal: (t) => new Date(t).toISOString().slice(0, 19).replace("T", "_").replace(/:/g, ""),
        path: { join: posix.join, basename: posix.basename, dirname: posix.dirname,
                stem: (p) => posix.basename(p, posix.extname(p)) },
        print: (...args) => log.push(args.map(String).join(" ")),
        alert: (...args) => log.push("ALERT " + args.map(String).join(" ")),
    });
    vm.runInContext(fs.readFileSync(scriptPath, "utf8") + "\n;this.JOB_TYPE = JOB_TYPE; this.compileJob = compileJob;",
                    context, { filename: scriptPath });
    const jobType = context.JOB_TYPE;
    if (typeof jobType.label !== "string" || !Array.isArray(jobType.settings)) {
        throw new Error("JOB_TYPE needs a label and a settings list");
    }
    const job = {
        name: "test job", type: posix.basename(scriptPath, ".js"), priority: 50, created: Date.now(),
        settings: prepareSettings(jobType, given), metadata: {},
        addTask: (task) => {
            if (!(task instanceof AuthoredTask)) throw new TypeError("addTask() takes an author.Task");
            tasks.push(task);
        },
    };
    context.compileJob(job);
    return {
        label: jobType.label,
        settings: jobType.settings,
        tasks: tasks.map((t) => ({ name: t.name, type: t.type, priority: t.priority,
                                   commands: t.commands.map((c) => ({ name: c.name, parameters: c.parameters })),
                                   dependencies: t.dependencies.map((d) => d.name) })),
        log,
    };
}

try {
    const out = compile(process.argv[2], JSON.parse(process.argv[3] || "{}"));
    process.stdout.write(JSON.stringify(out));
} catch (err) {
    process.stderr.write(`compile failed: ${err && err.message ? err.message : err}\n`);
    process.exit(1);
}
