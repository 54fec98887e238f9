"""The live 3D viewport: the DreamWaltz engine's Rendered preview, and the Gaussians as an overlay
in Solid and Material Preview shading (and over another engine's Rendered preview).

Both render through the viewport's own projection (`camera.view_to_opencv` of the region's
window and view matrices), so the Gaussians sit on the proxy in camera, orthographic and
perspective views, camera zoom, pan and lens shift included. A region's frame is fetched from
the backend only when its request (pose, objects, view, size) differs from the last one; the
frame goes to the GPU straight from the shared-memory numpy arrays (a `gpu.types.Buffer` over
them, no copy) and stays there until then. The overlay's shader writes each pixel's depth, so
the viewport's depth test lets the scene's meshes hide the Gaussians behind them.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import time
from typing import Any, Callable

import bpy
from bpy.props import BoolProperty, PointerProperty

from . import session
from .camera import CameraCV, view_to_opencv
from .scene_composite import scene_has_gaussians

log = logging.getLogger("dreamwaltz.viewport")

DEPTH_BIAS = 0.03
"""Metres the overlay's Gaussians are drawn nearer than they are: the proxy mesh (drawn in
Solid shading) lies on the body surface, and skin-level Gaussians must not sink into it."""
OVERLAY_SHADINGS = ("SOLID", "MATERIAL", "RENDERED")
MAX_REGIONS = 8
"""Regions whose last frame stays on the GPU; the least recently drawn goes first (closed views
never say so)."""


def region_camera(region: Any, region_3d: Any) -> CameraCV:
    """The camera Blender draws a 3D viewport region with."""
    return view_to_opencv(region_3d.window_matrix, region_3d.view_matrix, region.width, region.height)


@dataclasses.dataclass
class ViewFrame:
    """One region's last frame: the request it answers and whatever `upload` made of it."""

    key: str
    data: Any
    timing: dict


class ViewFrames:
    """The last frame of each viewport region; `get` renders only when the request changed.

    `upload(reply)` turns a backend reply (arrays that live until the next request) into what
    the frame keeps: GPU textures when drawing, anything a test wants without a GPU."""

    def __init__(self, upload: Callable[[dict], Any], color: str, slot: str) -> None:
        self._upload = upload
        self._color = color
        self._slot = slot
        self._frames: dict[Any, ViewFrame] = {}
        self.renders = 0

    def get(self, region_key: Any, depsgraph: Any, camera: CameraCV) -> ViewFrame:
        from .engine import frame_request, render_frame

        t0 = time.perf_counter()
        request = frame_request(depsgraph, camera)
        key = json.dumps(request, sort_keys=True)
        t1 = time.perf_counter()
        last = self._frames.get(region_key)
        if last is not None and last.key == key:
            return self._keep(region_key, last)
        reply = render_frame(request, color=self._color, slot=self._slot)
        t2 = time.perf_counter()
        data = self._upload(reply)
        timing = dict(reply.get("timing", {}), rig_ms=round((t1 - t0) * 1e3, 3),
                      upload_ms=round((time.perf_counter() - t2) * 1e3, 3))
        self.renders += 1
        return self._keep(region_key, ViewFrame(key, data, timing))

    def _keep(self, region_key: Any, frame: ViewFrame) -> ViewFrame:
        self._frames.pop(region_key, None)
        self._frames[region_key] = frame
        while len(self._frames) > MAX_REGIONS:
            self._frames.pop(next(iter(self._frames)))
        return frame

    def forget(self) -> None:
        self._frames.clear()


# ---- drawing (needs a GPU context) ------------------------------------------------------------
@dataclasses.dataclass
class Textures:
    color: Any
    depth: Any
    width: int
    height: int


def upload_textures(reply: dict) -> Textures:
    """The reply's RGBA and depth as GPU textures, read straight from shared memory (float32
    textures: the driver copies float data without converting it)."""
    import gpu

    height, width = int(reply["height"]), int(reply["width"])
    rgba = reply["rgba"].reshape(-1)
    depth = reply["depth"].reshape(-1)
    color = gpu.types.GPUTexture((width, height), format="RGBA32F",  # pyright: ignore[reportCallIssue]
                                 data=gpu.types.Buffer("FLOAT", rgba.size, rgba))  # pyright: ignore[reportCallIssue]
    z = gpu.types.GPUTexture((width, height), format="R32F",  # pyright: ignore[reportCallIssue]
                             data=gpu.types.Buffer("FLOAT", depth.size, depth))  # pyright: ignore[reportCallIssue]
    return Textures(color, z, width, height)


def draw_rendered(engine: Any, textures: Textures, scene: Any) -> None:
    """The engine's Rendered preview: scene-linear colour through Blender's display transform."""
    import gpu
    from gpu_extras.presets import draw_texture_2d

    gpu.state.blend_set("ALPHA_PREMULT")
    engine.bind_display_space_shader(scene)
    draw_texture_2d(textures.color, (0, 0), textures.width, textures.height)
    engine.unbind_display_space_shader()
    gpu.state.blend_set("NONE")


_SHADERS: dict[str, Any] = {}
VERTEX = """
void main()
{
  uv = pos * 0.5 + 0.5;
  gl_Position = vec4(pos, 0.0, 1.0);
}
"""
# `srgbTarget` is the uniform Blender sets on every bound shader that declares it: true when the
# framebuffer stores sRGB (the viewport's overlay buffer), whose writes expect linear values.
FRAGMENT = """
void main()
{
  ivec2 texel = ivec2(uv * vec2(textureSize(image, 0)));  /* no filtering: empty depth is 1e10 */
  vec4 c = texelFetch(image, texel, 0);
  if (c.a < 1.0 / 255.0) {
    discard;
  }
  float z_view = depth_bias - texelFetch(depth, texel, 0).r;
  float ndc = (depth_map.x * z_view + depth_map.y) / (depth_map.z * z_view + depth_map.w);
  gl_FragDepth = clamp(0.5 * ndc + 0.5, 0.0, 1.0);
  vec3 shown = clamp(c.rgb / c.a, 0.0, 1.0);
  if (srgbTarget) {
    shown = mix(shown / 12.92, pow((shown + 0.055) / 1.055, vec3(2.4)), step(vec3(0.04045), shown));
  }
  color = vec4(shown * c.a, c.a);
}
"""


def overlay_shader() -> Any:
    """Draws a frame's display colours over the viewport at the frame's own depth."""
    shader = _SHADERS.get("overlay")
    if shader is not None:
        return shader
    import gpu

    from . import compat

    info = gpu.types.GPUShaderCreateInfo()
    info.push_constant("VEC4", "depth_map")
    info.push_constant("FLOAT", "depth_bias")
    info.push_constant("BOOL", "srgbTarget")
    info.sampler(0, "FLOAT_2D", "image")
    info.sampler(1, "FLOAT_2D", "depth")
    stage = gpu.types.GPUStageInterfaceInfo("dreamwaltz_overlay")  # pyright: ignore[reportCallIssue]
    stage.smooth("VEC2", "uv")
    info.vertex_in(0, "VEC2", "pos")
    info.vertex_out(stage)
    info.fragment_out(0, "VEC4", "color")
    compat.writes_depth(info)
    info.vertex_source(VERTEX)
    info.fragment_source(FRAGMENT)
    shader = _SHADERS["overlay"] = gpu.shader.create_from_info(info)
    return shader


def draw_overlay_frame(textures: Textures, window_matrix: Any) -> None:
    """Compose a frame into the bound framebuffer by depth (its depth test, not its depth)."""
    import gpu
    from gpu_extras.batch import batch_for_shader

    shader = overlay_shader()
    batch = _SHADERS.get("quad")
    if batch is None:
        batch = _SHADERS["quad"] = batch_for_shader(shader, "TRI_FAN", {"pos": ((-1, -1), (1, -1), (1, 1), (-1, 1))})
    P = [list(row) for row in window_matrix]
    shader.bind()
    shader.uniform_float("depth_map", (P[2][2], P[2][3], P[3][2], P[3][3]))
    shader.uniform_float("depth_bias", DEPTH_BIAS)
    shader.uniform_sampler("image", textures.color)
    shader.uniform_sampler("depth", textures.depth)
    gpu.state.blend_set("ALPHA_PREMULT")
    gpu.state.depth_test_set("LESS_EQUAL")
    gpu.state.depth_mask_set(False)
    batch.draw(shader)
    gpu.state.depth_test_set("NONE")
    gpu.state.blend_set("NONE")


# ---- the overlay draw handler --------------------------------------------------------------
# What Blender needs to outlive a redraw: the draw handler, and each kind of view's last frames.
_overlay: dict[str, Any] = {"handle": None, "frames": None, "rendered": None, "error": None}


def overlay_frames() -> ViewFrames:
    """The overlay's frames: display colours, which its shader writes as they are."""
    frames = _overlay["frames"]
    if frames is None:
        frames = _overlay["frames"] = ViewFrames(upload_textures, color="srgb", slot="overlay")
    return frames


def rendered_frames() -> ViewFrames:
    """The Rendered preview's frames: scene-linear, for Blender's display transform."""
    frames = _overlay["rendered"]
    if frames is None:
        frames = _overlay["rendered"] = ViewFrames(upload_textures, color="linear", slot="viewport")
    return frames


def overlay_wanted(context: Any) -> bool:
    """Solid and Material Preview (and another engine's Rendered preview) of a scene with avatars."""
    space = context.space_data
    if space is None or space.type != "VIEW_3D" or context.region_data is None:
        return False
    scene = context.scene
    if not scene.dreamwaltz_viewport.overlay or _overlay["error"] is not None:
        return False
    shading = space.shading.type
    if shading not in OVERLAY_SHADINGS or (shading == "RENDERED" and scene.render.engine == "DREAMWALTZ"):
        return False
    return scene_has_gaussians(scene)


def draw_overlay() -> None:
    context: Any = bpy.context
    if not overlay_wanted(context):
        return
    region, region_3d = context.region, context.region_data
    try:
        frame = overlay_frames().get(region.as_pointer(), context.evaluated_depsgraph_get(),
                                     region_camera(region, region_3d))
    except Exception as exc:  # a draw handler cannot report: stop and say why in the panel
        _overlay["error"] = f"{type(exc).__name__}: {exc}"
        log.warning("the Gaussian overlay stopped: %s", exc)
        return
    session.record_timing(frame.timing)
    draw_overlay_frame(frame.data, region_3d.window_matrix)


def overlay_error() -> str | None:
    return _overlay["error"]


def _overlay_toggled(settings: Any, context: Any) -> None:
    _overlay["error"] = None
    overlay_frames().forget()


class DreamWaltzViewport(bpy.types.PropertyGroup):
    overlay: BoolProperty(  # type: ignore[valid-type]
        name="Gaussians in Solid View", default=True, update=_overlay_toggled,
        description="Draw the avatars' Gaussians over Solid and Material Preview shading, hidden by the meshes "
                    "in front of them")


def register() -> None:
    bpy.utils.register_class(DreamWaltzViewport)
    setattr(bpy.types.Scene, "dreamwaltz_viewport", PointerProperty(type=DreamWaltzViewport))
    _overlay["handle"] = bpy.types.SpaceView3D.draw_handler_add(draw_overlay, (), "WINDOW", "POST_VIEW")


def unregister() -> None:
    handle = _overlay["handle"]
    if handle is not None:
        bpy.types.SpaceView3D.draw_handler_remove(handle, "WINDOW")
    _overlay.update(handle=None, frames=None, rendered=None, error=None)
    _SHADERS.clear()
    delattr(bpy.types.Scene, "dreamwaltz_viewport")
    bpy.utils.unregister_class(DreamWaltzViewport)
