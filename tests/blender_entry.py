"""Runs one test script inside real Blender (the bpy module) with the add-on enabled.

Usage: python tests/blender_entry.py SCRIPT RESULT_JSON. The script gets `result` (a dict it
fills; written as JSON at the end), `ROOT`, `scene_camera`, `box` and `scene_state` in its globals. Kept out of the pytest process so
that Blender and torch never share a process, as in real use.
"""

import json
import os
import sys
import traceback
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import bpy  # noqa: E402  (bpy first: it puts Blender's own modules such as addon_utils on the path)
import addon_utils  # noqa: E402



def scene_camera(location, rotation, size=None, lens=None):
    """A new camera, made the scene's, at `location` with Euler `rotation`; optionally the
    render size (width, height) and the focal length in mm."""
    scene = bpy.context.scene
    cam = bpy.data.objects.new("Camera", bpy.data.cameras.new("Camera"))
    scene.collection.objects.link(cam)
    scene.camera = cam
    cam.location, cam.rotation_euler = location, rotation
    if size is not None:
        scene.render.resolution_x, scene.render.resolution_y = size
    if lens is not None:
        cam.data.lens = lens
    return cam


def box(name, size, location, color=None, emit=True):
    """A box mesh of `size` (x, y, z) metres at `location` in the scene; with `color` (RGBA) an
    emission (or, `emit=False`, diffuse) material of that colour."""
    import bmesh

    scene = bpy.context.scene
    mesh = bpy.data.meshes.new(name)
    bm = bmesh.new()
    bmesh.ops.create_cube(bm, size=1.0)
    bmesh.ops.scale(bm, vec=size, verts=bm.verts)
    bm.to_mesh(mesh)
    obj = bpy.data.objects.new(name, mesh)
    scene.collection.objects.link(obj)
    obj.location = location
    if color is not None:
        mat = bpy.data.materials.new(name)
        mat.use_nodes = True
        nodes, links = mat.node_tree.nodes, mat.node_tree.links
        nodes.clear()
        shader = nodes.new("ShaderNodeEmission" if emit else "ShaderNodeBsdfDiffuse")
        shader.inputs["Color"].default_value = color
        links.new(shader.outputs[0], nodes.new("ShaderNodeOutputMaterial").inputs["Surface"])
        mesh.materials.append(mat)
    return obj


def _props(struct):
    out = {}
    for prop in struct.bl_rna.properties:
        name = prop.identifier
        if name == "rna_type" or prop.type == "COLLECTION":
            continue
        try:
            value = getattr(struct, name)
        except Exception:
            continue
        if prop.type == "POINTER":
            out[name] = getattr(value, "name", None) if isinstance(value, bpy.types.ID) else (value is not None)
        elif getattr(prop, "is_array", False) or hasattr(value, "to_tuple") or hasattr(value, "col"):
            out[name] = repr([tuple(v) if hasattr(v, "__len__") else v for v in value])
        else:
            out[name] = repr(value)
    return out


def _tree(tree):
    if tree is None:
        return None
    return {"name": tree.name, "nodes": sorted(f"{n.bl_idname}:{n.name}" for n in tree.nodes),
            "links": sorted(f"{lk.from_node.name}.{lk.from_socket.identifier}>{lk.to_node.name}.{lk.to_socket.identifier}"
                            for lk in tree.links)}


def scene_state():
    """A plain description of the file and the scene (every datablock; the scene's, its render's,
    colour management's, objects', pose bones' and camera backgrounds' properties; the
    compositor in each version's form), for checking that a failed operator changed nothing."""
    scene = bpy.context.scene
    bpy.context.view_layer.update()  # derived values (matrix_world) as Blender would show them
    state = {"ids": sorted(f"{name}:{item.name}" for name in dir(bpy.data)
                           if isinstance(getattr(bpy.data, name, None), bpy.types.bpy_prop_collection)
                           for item in getattr(bpy.data, name) if isinstance(item, bpy.types.ID)),
             "scene": _props(scene), "render": _props(scene.render), "view": _props(scene.view_settings),
             "objects": {}, "selected": sorted(o.name for o in bpy.context.selected_objects),
             "active": getattr(bpy.context.view_layer.objects.active, "name", None), "mode": bpy.context.mode}
    for obj in bpy.data.objects:
        item = {"props": _props(obj)}
        if obj.animation_data is not None:
            item["anim"] = _props(obj.animation_data)
        if obj.pose is not None:
            item["pose"] = {pb.name: _props(pb) for pb in obj.pose.bones}
        if obj.type == "CAMERA":
            item["backgrounds"] = [_props(bg) for bg in obj.data.background_images]
            item["camera"] = _props(obj.data)
        state["objects"][obj.name] = item
    for action in bpy.data.actions:
        state.setdefault("actions", {})[action.name] = action.use_fake_user
    if hasattr(scene, "node_tree"):
        state["compositor"] = {"use_nodes": scene.use_nodes, "tree": _tree(scene.node_tree)}
    elif hasattr(scene, "compositor_effects"):
        state["compositor"] = [(e.name, _tree(e.node_group)) for e in scene.compositor_effects]
    else:
        state["compositor"] = _tree(scene.compositing_node_group)
    return state


script, out = sys.argv[1], sys.argv[2]
result: dict = {}
try:
    bpy.ops.wm.read_factory_settings(use_empty=True)
    result["blender"] = list(bpy.app.version)
    if not os.environ.get("DREAMWALTZ_TEST_NO_REPO_ADDON"):
        mod = addon_utils.enable("dreamwaltz_blender", default_set=True, handle_error=None)
        if mod is None:
            raise RuntimeError("the add-on did not enable")
    code = compile(Path(script).read_text(), script, "exec")
    exec(code, {"result": result, "ROOT": ROOT, "bpy": bpy, "scene_camera": scene_camera,
                "box": box, "scene_state": scene_state, "__name__": "__blender_test__"})
    result.setdefault("ok", True)
except BaseException:
    result["ok"] = False
    result["traceback"] = traceback.format_exc()
finally:
    try:
        import dreamwaltz_blender.session as session

        session.shutdown()
    except Exception:
        pass
    Path(out).write_text(json.dumps(result, default=lambda o: o.tolist() if hasattr(o, "tolist") else str(o)))
