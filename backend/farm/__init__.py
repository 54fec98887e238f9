"""Beyond one machine: shots and batches of avatars on a scheduler people already have.

`units` defines the two units of work (a chunk of frames rendered by Blender with the add-on, one
`backend train --resume` per prompt); `slurm`, `openjd` and `flamenco` turn them into array jobs,
job bundles and job types. `render_chunk.py` is what a worker's Blender runs; `frames.py` reads
frame ranges on both sides. Nothing here schedules: the farm's own scheduler does.
"""
