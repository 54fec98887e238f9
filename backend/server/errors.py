"""Exceptions from the backend's modules turned into protocol error codes and user sentences."""

from __future__ import annotations

from .. import protocol as P


def classify(exc: BaseException) -> tuple[str, str]:
    """(code, message) for an exception raised while serving a request or running a job."""
    if isinstance(exc, P.ProtocolError):
        return exc.code, exc.message
    name = type(exc).__name__
    module = type(exc).__module__ or ""
    message = str(exc) or name
    if name == "AvatarFileError" or name == "AvatarInitError":
        return P.AVATAR_ERROR, message
    if name == "BodyModelError":
        return P.AVATAR_ERROR, message
    if name == "PoseError":
        return P.POSE_ERROR, message
    if name == "RenderError":
        return P.RENDER_ERROR, message
    if name in ("PlyError", "GaussianFileError", "MotionError"):
        return P.FILE_ERROR, message
    if isinstance(exc, FileNotFoundError):
        return P.NOT_FOUND, f"{exc.filename or message}: no such file or folder"
    if isinstance(exc, PermissionError):
        return P.FILE_ERROR, f"{exc.filename or message}: permission denied"
    if isinstance(exc, OSError):
        return P.FILE_ERROR, f"{exc.filename + ': ' if exc.filename else ''}{exc.strerror or message}"
    if isinstance(exc, MemoryError) or "out of memory" in message.lower():
        return P.RENDER_ERROR, f"out of memory: {message[:200]}"
    if module.startswith("backend.") and isinstance(exc, ValueError):
        return P.BAD_REQUEST, message
    return P.INTERNAL, f"internal error ({name}: {message[:300]}); the backend log has the details"
