"""An inference :class:`~inference_svc.core.observer.Observer` that remembers what it was told, for tests."""

from __future__ import annotations

import inspect
from collections.abc import Callable

from inference_svc.core.observer import Observer


class RecordingObserver:
    """Records every report as ``(event, args)``; a name the Observer protocol lacks raises AttributeError."""

    def __init__(self) -> None:
        self.events: list[tuple[str, tuple[object, ...]]] = []

    def __getattr__(self, event: str) -> Callable[..., None]:
        if event.startswith("_"):
            raise AttributeError(event)
        signature = inspect.signature(getattr(Observer, event))

        def record(*args: object, **kwargs: object) -> None:
            # Bound to the protocol's signature, so a call with the wrong arguments fails here as it would there.
            self.events.append((event, tuple(signature.bind(self, *args, **kwargs).arguments.values())[1:]))

        return record

    def calls(self, event: str) -> list[tuple[object, ...]]:
        """The arguments of every ``event`` report, in order."""
        return [args for name, args in self.events if name == event]
