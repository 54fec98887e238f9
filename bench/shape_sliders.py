"""Main-thread time per shape-slider change in Blender, and the backend's shape op behind it.

    python bench/shape_sliders.py [--repeats 5] [--out bench/results/shape_sliders_cpu.txt]

A slider move used to block Blender's main thread for the whole shape request (the backend's
measurement gradients by finite differences: 21 body evaluations per report, four reports for
a height or weight target) and then rebuild the rig. Now the move is queued
(`shape.schedule`), sent without waiting, and the reply applied by a timer tick; moves made while
a request runs collapse into the latest. This measures, in real Blender (bpy, background), the
main-thread time of each way for a beta, a height and a weight change, a burst of 10 moves (a
drag), and in this process the backend's report by autograd beside finite differences.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from bench.report import cpu_name  # noqa: E402

SCRIPT = """
import time
import numpy as np
from dreamwaltz_blender import session, shape
bpy.ops.dreamwaltz.add_avatar(filepath=ARGS["avatar"])
arm = bpy.context.active_object
client = session.client()
sent = [0]
real_submit = client.submit
def counting_submit(*a, **kw):
    sent[0] += 1
    return real_submit(*a, **kw)
client.submit = counting_submit

def queued(moves):
    # main-thread ms: the slider callbacks (schedule) and every timer tick, until the rig is done
    main, t_start, sent[0] = 0.0, time.perf_counter(), 0
    for targets in moves:
        t = time.perf_counter()
        if "beta" in targets:
            shape._busy.add(arm.name)          # set the slider as a drag would, without the callback
            arm.dreamwaltz_shape.betas[0] = targets["beta"]
            shape._busy.discard(arm.name)
            shape.schedule(arm.name)
        else:
            shape.schedule(arm.name, **targets)
        main += time.perf_counter() - t
        t = time.perf_counter()
        shape.tick()
        main += time.perf_counter() - t
        time.sleep(0.01)
    while True:
        t = time.perf_counter()
        busy = shape.tick()
        main += time.perf_counter() - t
        if not busy:
            break
        time.sleep(0.005)
    return main * 1e3, (time.perf_counter() - t_start) * 1e3, sent[0]

def blocking(targets):
    t = time.perf_counter()
    if "beta" in targets:
        betas = shape.current_betas(arm)
        betas[0] = targets["beta"]
        shape.apply(bpy.context, arm, betas=betas)
    else:
        shape.apply(bpy.context, arm, **targets)
    return (time.perf_counter() - t) * 1e3

rows = {}
cases = {"beta 0": lambda i: {"beta": 0.5 + 0.1 * i}, "height": lambda i: {"height": 1.80 + 0.01 * i},
         "weight": lambda i: {"weight": 70.0 + i}}
for name, make in cases.items():
    b = [blocking(make(i)) for i in range(ARGS["repeats"])]
    q = [queued([make(i)]) for i in range(ARGS["repeats"])]
    rows[name] = dict(blocking=b, main=[x[0] for x in q], latency=[x[1] for x in q], sent=[x[2] for x in q])
drag = [queued([{"beta": 0.1 * k + 0.01 * i} for k in range(10)]) for i in range(ARGS["repeats"])]
rows["drag: 10 beta moves, 10 ms apart"] = dict(blocking=[10 * float(np.median(rows["beta 0"]["blocking"]))],
                                                 main=[x[0] for x in drag], latency=[x[1] for x in drag],
                                                 sent=[x[2] for x in drag])
result["rows"] = rows
"""


def finite_difference_report(body, betas, step: float = 0.1) -> None:
    """The old measurement: 21 body evaluations (central differences over 10 betas)."""
    from backend.avatar.measure import measure

    measure(body, betas)
    for k in range(10):
        up, down = betas.copy(), betas.copy()
        up[k] += step
        down[k] -= step
        measure(body, up), measure(body, down)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--out", default=None)
    args = parser.parse_args()

    import torch

    from backend.avatar import init_template_avatar, save_avatar
    from backend.avatar.measure import shape_report
    from backend.body import BodyModel

    body = BodyModel.load()
    betas = np.zeros(10)
    timing = {}
    for name, fn in (("autograd (now)", lambda: shape_report(body, betas)),
                     ("finite differences (before)", lambda: finite_difference_report(body, betas))):
        fn()
        t = time.perf_counter()
        for _ in range(args.repeats):
            fn()
        timing[name] = (time.perf_counter() - t) / args.repeats * 1e3

    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        save_avatar(init_template_avatar(body, 20_000), tmp / "avatar")
        script = tmp / "bench_script.py"
        script.write_text(f"ARGS = {json.dumps(dict(avatar=str(tmp / 'avatar'), repeats=args.repeats))}\n"
                          + textwrap.dedent(SCRIPT))
        result_file = tmp / "result.json"
        proc = subprocess.run([sys.executable, str(ROOT / "tests" / "blender_entry.py"), str(script), str(result_file)],
                              cwd=ROOT, capture_output=True, text=True)
        result = json.loads(result_file.read_text()) if result_file.exists() else {}
        if not result.get("ok"):
            print(proc.stderr[-3000:], result.get("traceback"), file=sys.stderr)
            return 1

    med = lambda xs: float(np.median(xs))  # noqa: E731
    cpu = cpu_name()
    load = f"; load average {os.getloadavg()[0]:.1f} (a shared machine)" if hasattr(os, "getloadavg") else ""
    lines = ["# bench/shape_sliders.py — shape sliders in Blender 5.0.1 (bpy, background), median of "
             f"{args.repeats}", f"# device: {cpu}, {torch.get_num_threads()} threads{load}; open template body, "
             "20,000 Gaussians", "",
             "Blocking is how a slider worked before (the request waited on the main thread), timed here with "
             "today's backend; the backend rows below compare its report by autograd (now) and by finite "
             "differences (before). A drag's blocking figure is 10 single moves.", "",
             "| change | main thread, blocking ms | main thread, queued (now) ms | until applied ms "
             "| requests sent |", "|---|---:|---:|---:|---:|"]
    for name, row in result["rows"].items():
        lines.append(f"| {name} | {med(row['blocking']):.0f} | {med(row['main']):.1f} | {med(row['latency']):.0f} "
                     f"| {med(row['sent']):.0f} |")
    lines += ["", "| backend shape report (height, weight and their gradients over 10 betas) | ms |", "|---|---:|"]
    lines += [f"| {name} | {ms:.1f} |" for name, ms in timing.items()]
    text = "\n".join(lines) + "\n"
    print(text)
    if args.out:
        Path(args.out).write_text(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
