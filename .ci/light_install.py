"""The light install works: the detector, protocol and simulator with the core
dependencies only, and never an import of what the ``demo`` extra brings.

Run by ``.ci/run`` in a fresh virtual environment holding ``pip install .``
(no extras), and by ``tests/test_light_install.py`` in the full one (where the
extra's packages exist, so only the imports are checked there).
"""

from __future__ import annotations

import sys

#: What the ``demo`` extra brings: the detector must never import them.
EXTRA_MODULES = ("tiled", "bluesky_tiled_plugins", "databroker", "matplotlib", "rich")


def imported_extras() -> list[str]:
    return sorted({m.split(".")[0] for m in sys.modules} & set(EXTRA_MODULES))


def main() -> int:
    import ophyd_xspress
    from ophyd_xspress import XspressDetector, XspressSimulator

    assert imported_extras() == [], imported_extras()

    from bluesky import RunEngine
    from bluesky.plans import count
    from ophyd_async.core import init_devices

    RE = RunEngine({}, call_returns_result=True)  # noqa: N806
    documents: list[str] = []
    RE.subscribe(lambda name, doc: documents.append(name))
    with XspressSimulator(channels=2, pace=False, write_hdf5=False) as sim:
        sim.control.exposure_time = 0.01
        with init_devices():
            xspress = XspressDetector(
                tango=sim.tango_trl,
                stream=sim.stream_endpoint,
                name="xspress",
                rois={"Fe": (6250, 6560)},
                path=sys.argv[1] if len(sys.argv) > 1 else None,
            )
        RE(count([xspress], 2))
    assert documents.count("event") == 2, documents
    assert imported_extras() == [], imported_extras()
    print(f"light install: ophyd_xspress {ophyd_xspress.__name__} ok, a count ran")
    return 0


if __name__ == "__main__":
    sys.exit(main())
