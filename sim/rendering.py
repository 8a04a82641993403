"""Offscreen multi-view rendering of MuJoCo scenes on the CPU.

Meta-World's scene as shipped renders at about 100 frames/s on these CPUs (llvmpipe) at any image
size: a 4096x4096 shadow map, 4x multisampling, reflections, and robot meshes of ~77k triangles
dominate. The ``fast`` quality (the default) turns the first three off and renders from a copy of
the model whose large visual meshes are decimated by vertex clustering (physics keeps the original
model), which at 96 px is visually indistinguishable and about twice as fast again. ``high``
keeps the shipped settings for figures and for checking that results do not depend on quality.
"""

from __future__ import annotations

import atexit
import copy
import os
import weakref
from dataclasses import dataclass

# EGL renders without a display; it must be chosen before mujoco is imported.
if not os.environ.get("DISPLAY") and not os.environ.get("WAYLAND_DISPLAY"):
    os.environ.setdefault("MUJOCO_GL", "egl")

import mujoco  # noqa: E402
import numpy as np  # noqa: E402

from sim.randomize import Look, LookApplier, LookTargets  # noqa: E402

QUALITIES = ("fast", "high")
# Skybox, fog and haze cost ~5% together and change the background: keep them as shipped.
_FAST_OFF_FLAGS = ("mjRND_SHADOW", "mjRND_REFLECTION")


_llvm_preloaded = False
# Every rig with a live GL context, so that one left unclosed is freed before interpreter teardown
# (by then EGL's module globals are gone and mujoco's Renderer.__del__ prints a screen of tracebacks).
_LIVE_RIGS: "weakref.WeakSet[CameraRig]" = weakref.WeakSet()
_close_at_exit_registered = False


def close_live_rigs() -> None:
    """Free the GL context of every rig still open (runs at exit; safe to call at any time)."""
    for rig in list(_LIVE_RIGS):
        rig.close()


def _preload_triton() -> None:
    """Import triton (if installed) before the first GL context exists.

    Mesa's llvmpipe and triton each bring an LLVM; when triton is imported AFTER an EGL context
    was created (torch does so lazily, e.g. when an optimiser is built or transformers loads),
    the process dies with SIGSEGV. Loading triton first makes both coexist.
    """
    global _llvm_preloaded
    if _llvm_preloaded:
        return
    _llvm_preloaded = True
    import importlib.util

    if importlib.util.find_spec("triton") is not None:
        try:
            import triton  # noqa: F401
        except Exception:  # a broken triton is torch's concern, not the renderer's
            pass


class CameraError(ValueError):
    """An unknown camera or an invalid image size."""


def check_image_size(image_size: int | tuple[int, int]) -> tuple[int, int]:
    """Normalise ``image_size`` (an int or ``(height, width)``) and reject bad values clearly."""
    if isinstance(image_size, (int, np.integer)) and not isinstance(image_size, bool):
        size = (int(image_size), int(image_size))
    elif isinstance(image_size, (tuple, list)) and len(image_size) == 2:
        size = (int(image_size[0]), int(image_size[1]))
    else:
        raise CameraError(f"image_size must be an int or (height, width), got {image_size!r}")
    if min(size) < 8 or max(size) > 2048:
        raise CameraError(f"image_size {size} out of range: use 8 to 2048 pixels per side (e.g. 96)")
    if size[0] % 2 or size[1] % 2:
        raise CameraError(f"image_size {size} has an odd side: use even sizes (e.g. 64, 84, 96, 128)")
    return size


def make_cameras_upright(model: mujoco.MjModel, data: mujoco.MjData) -> list[str]:
    """Roll fixed cameras whose image would come out upside down by 180 degrees about their axis.

    A camera is upside down when its image-up axis (the camera frame's y) points downwards in the
    world; Meta-World's corner views are. Returns the names of the cameras it turned.
    """
    mujoco.mj_forward(model, data)
    turned = []
    roll = np.array([0.0, 0.0, 0.0, 1.0])  # 180 degrees about the camera's viewing axis
    for i in range(model.ncam):
        up = data.cam_xmat[i].reshape(3, 3)[:, 1]
        if model.cam_mode[i] == mujoco.mjtCamLight.mjCAMLIGHT_FIXED and up[2] < -0.1:
            quat = np.zeros(4)
            mujoco.mju_mulQuat(quat, model.cam_quat[i].copy(), roll)
            model.cam_quat[i] = quat
            turned.append(model.camera(i).name)
    mujoco.mj_forward(model, data)
    return turned


def decimated_copy(model: mujoco.MjModel, max_faces: int = 800) -> mujoco.MjModel:
    """A copy of ``model`` whose meshes above ``max_faces`` triangles are simplified for rendering.

    Vertex clustering on a grid whose cell size is searched so each mesh keeps at most
    ``max_faces`` faces; cluster representatives move to the cluster mean. Only rendering uses the
    copy (the arrays keep their sizes; surplus faces are simply not counted), so physics, contacts
    and ids are untouched.
    """
    out = copy.deepcopy(model)
    for i in range(out.nmesh):
        nface = int(out.mesh_facenum[i])
        if nface <= max_faces:
            continue
        va, nv, fa = out.mesh_vertadr[i], out.mesh_vertnum[i], out.mesh_faceadr[i]
        verts = out.mesh_vert[va : va + nv].astype(np.float64)
        faces = out.mesh_face[fa : fa + nface].copy()
        lo, hi = 1e-5, float(np.ptp(verts, axis=0).max())
        best = None
        for _ in range(40):  # bisection on the cell size
            cell = np.sqrt(lo * hi)
            keys = np.floor((verts - verts.min(0)) / cell).astype(np.int64)
            _, rep, inverse = np.unique(keys, axis=0, return_index=True, return_inverse=True)
            inverse = inverse.ravel()
            remapped = rep[inverse[faces]]
            keep = (
                (remapped[:, 0] != remapped[:, 1])
                & (remapped[:, 1] != remapped[:, 2])
                & (remapped[:, 0] != remapped[:, 2])
            )
            if keep.sum() > max_faces:
                lo = cell
            else:
                hi, best = cell, (rep, inverse, remapped, keep)
                if keep.sum() >= 0.8 * max_faces:
                    break
        if best is None:
            continue
        rep, inverse, remapped, keep = best
        sums = np.zeros((len(rep), 3))
        np.add.at(sums, inverse, verts)
        verts[rep] = sums / np.bincount(inverse)[:, None]
        out.mesh_vert[va : va + nv] = verts
        n = int(keep.sum())
        out.mesh_face[fa : fa + n] = remapped[keep]
        out.mesh_facenormal[fa : fa + n] = out.mesh_facenormal[fa : fa + nface][keep].copy()
        if out.mesh_texcoordadr[i] >= 0:
            out.mesh_facetexcoord[fa : fa + n] = out.mesh_facetexcoord[fa : fa + nface][keep].copy()
        out.mesh_facenum[i] = n
    return out


@dataclass
class RigConfig:
    """Which cameras render, at what size and quality.

    Attributes:
        cameras: camera names of the scene, e.g. ``["corner", "corner2", "gripperPOV"]``.
        image_size: ``(height, width)`` in pixels.
        quality: ``fast`` (default; shadows, multisampling and reflections off, decimated meshes)
            or ``high`` (the scene as shipped).
    """

    cameras: tuple[str, ...]
    image_size: tuple[int, int]
    quality: str = "fast"


class CameraRig:
    """Renders a set of named cameras of one MuJoCo model into uint8 (H, W, 3) images.

    One ``mujoco.Renderer`` serves every camera. Call :meth:`close` (or use the rig as a context
    manager) to free the GL context; EGL complains at exit otherwise.
    """

    def __init__(
        self,
        model: mujoco.MjModel,
        cameras: list[str] | tuple[str, ...],
        image_size: int | tuple[int, int] = 96,
        quality: str = "fast",
    ) -> None:
        names = [model.camera(i).name for i in range(model.ncam)]
        if isinstance(cameras, str):
            cameras = [cameras]
        cameras = tuple(cameras)
        if not cameras:
            raise CameraError(f"no cameras selected: choose one or more of {names}")
        unknown = [c for c in cameras if c not in names]
        if unknown:
            raise CameraError(f"unknown camera(s) {unknown}: this scene has {names}")
        if len(set(cameras)) != len(cameras):
            raise CameraError(f"camera listed twice in {list(cameras)}")
        if quality not in QUALITIES:
            raise CameraError(f"render quality {quality!r} unknown: use one of {QUALITIES}")
        self.config = RigConfig(cameras, check_image_size(image_size), quality)
        height, width = self.config.image_size
        render_model = model
        if quality == "fast":
            render_model = decimated_copy(model)
            render_model.vis.quality.shadowsize = 0
            render_model.vis.quality.offsamples = 0
        # The offscreen buffer must hold the image; grow it rather than fail on big sizes.
        render_model.vis.global_.offwidth = max(render_model.vis.global_.offwidth, width)
        render_model.vis.global_.offheight = max(render_model.vis.global_.offheight, height)
        self._renderer = None
        self._look: LookApplier | None = None  # built on first use: nothing changes while looks are off
        _preload_triton()
        try:
            self._renderer = mujoco.Renderer(render_model, height, width)
        except mujoco.FatalError as err:  # mujoco imported before MUJOCO_GL was set, no display
            raise RuntimeError(
                f"no OpenGL context for offscreen rendering ({err}). Set MUJOCO_GL=egl in the "
                "environment, or import sim before mujoco, when there is no display."
            ) from err
        _LIVE_RIGS.add(self)
        global _close_at_exit_registered
        if not _close_at_exit_registered:
            # Registered after mujoco's EGL set-up registered its own exit hook (which terminates the
            # display), so this one runs first: atexit calls hooks last-registered first.
            atexit.register(close_live_rigs)
            _close_at_exit_registered = True
        if quality == "fast":
            for flag in _FAST_OFF_FLAGS:
                self._renderer.scene.flags[getattr(mujoco.mjtRndFlag, flag)] = False

    @property
    def cameras(self) -> tuple[str, ...]:
        """The rig's camera names, in render order."""
        return self.config.cameras

    @property
    def render_model(self) -> mujoco.MjModel:
        """The model the rig draws (with ``quality=fast`` a decimated copy of the physics model)."""
        return self._renderer.model

    @property
    def look_targets(self) -> LookTargets:
        """What a look is drawn for here: the rig's cameras, the scene's lights and colour parts."""
        return self._applier().targets

    @property
    def look(self) -> Look | None:
        """The look on the rig now (None: the scene as built)."""
        return None if self._look is None else self._look.look

    def _applier(self) -> LookApplier:
        if self._look is None:
            self._look = LookApplier(self._renderer.model, self.config.cameras)
        return self._look

    def apply_look(self, look: Look | None) -> None:
        """Render with ``look`` (``sim.randomize``) from now on, relative to the scene as built; None
        restores it. Only the render model and scene change: the physics never sees a look."""
        if look is None and self._look is None:
            return
        self._applier().apply(look)

    def render(self, data: mujoco.MjData) -> dict[str, np.ndarray]:
        """Render every camera of the rig for the current ``data``: camera -> uint8 (H, W, 3)."""
        images = {}
        if self.look is None:
            for name in self.config.cameras:
                self._renderer.update_scene(data, camera=name)
                images[name] = self._renderer.render()  # a fresh array each call
            return images
        for name in self.config.cameras:
            self._renderer.update_scene(data, camera=name)
            self._look.edit_scene(self._renderer.scene, name)
            images[name] = self._look.add_noise(self._renderer.render())
        return images

    def view_pose(self, data: mujoco.MjData, camera: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Where ``camera`` renders from for ``data``, the look included: ``(position, forward, up)``,
        float64 (3,) each, in world coordinates."""
        if camera not in self.config.cameras:
            raise CameraError(f"camera {camera!r} is not in this rig: use one of {list(self.config.cameras)}")
        self._renderer.update_scene(data, camera=camera)
        if self.look is not None:
            self._look.edit_scene(self._renderer.scene, camera)
        eyes = self._renderer.scene.camera
        pos = (np.array(eyes[0].pos, np.float64) + np.array(eyes[1].pos, np.float64)) / 2
        return pos, np.array(eyes[0].forward, np.float64), np.array(eyes[0].up, np.float64)

    def close(self) -> None:
        """Free the GL context (idempotent)."""
        if self._renderer is not None:
            self._renderer.close()
            self._renderer = None

    def __enter__(self) -> "CameraRig":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __del__(self) -> None:
        try:
            self.close()
        except Exception:  # interpreter shutdown: GL may already be gone
            pass
