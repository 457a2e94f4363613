"""JAX's persistent compilation cache: compiled programs are kept on disk, so a run repeated does not compile again.

The cache lives in the user's cache directory, $XDG_CACHE_HOME/waferllm/jax (~/.cache/waferllm/jax when
XDG_CACHE_HOME is unset, the XDG base-directory standard). The CLI sets it up once, at entry
(`waferllm --compile-cache DIR|off`); library users call enable_compile_cache themselves. The same setting
keeps the engine's traced cost ledgers in DIR/waferllm-ledgers (engine/trace_store.py).
"""

from __future__ import annotations

from pathlib import Path

from waferllm import WaferError

OFF = "off"
LEDGERS = "waferllm-ledgers"  # the subfolder of traced ledgers


class CompileCacheError(WaferError):
    """The asked-for compile cache folder cannot be used."""


def default_cache_dir() -> Path:
    """$XDG_CACHE_HOME/waferllm/jax, or ~/.cache/waferllm/jax (a relative XDG_CACHE_HOME is ignored, per the spec)."""
    from waferllm.model.cache import cache_root

    return cache_root() / "jax"


def enable_compile_cache(where: str | Path | None = None) -> Path | None:
    """Turn JAX's persistent cache on at `where` (default: default_cache_dir()), or off for 'off'.

    Every compiled program is kept (no minimum compile time or size). Returns the folder, or None when off
    or when the default folder cannot be created (then nothing is cached); an explicit folder that cannot
    be created is a CompileCacheError.
    """
    import jax

    from waferllm.engine import trace_store

    if str(where) == OFF:
        jax.config.update("jax_enable_compilation_cache", False)
        trace_store.enable(None)
        return None
    path = Path(where).expanduser() if where is not None else default_cache_dir()
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        if where is None:  # the default location is a convenience: run uncached rather than fail
            jax.config.update("jax_enable_compilation_cache", False)
            trace_store.enable(None)
            return None
        raise CompileCacheError(f"cannot use {str(path)!r} as the compile cache: {e.strerror or e}") from None
    jax.config.update("jax_enable_compilation_cache", True)
    jax.config.update("jax_compilation_cache_dir", str(path))
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
    jax.config.update("jax_persistent_cache_min_entry_size_bytes", -1)
    trace_store.enable(path / LEDGERS)  # traced ledgers too (engine/trace_store.py); JAX keeps only *-cache files
    return path
