"""The raster of a map: frames to pixels, images, the start document's entry."""

from __future__ import annotations

import json

import numpy as np
import pytest

from ophyd_xspress.maps import METADATA_KEY, MapGrid, MapImages


def test_frames_fill_rows_in_order() -> None:
    grid = MapGrid(nx=3, ny=2, x=(0.0, 2.0), y=(10.0, 11.0))
    iy, ix = grid.pixel_of(range(6))
    assert list(zip(iy.tolist(), ix.tolist(), strict=True)) == [
        (0, 0), (0, 1), (0, 2), (1, 0), (1, 1), (1, 2),
    ]  # fmt: skip
    np.testing.assert_array_equal(grid.frame_index(), [[0, 1, 2], [3, 4, 5]])


def test_snake_rows_run_backwards_every_other_row() -> None:
    grid = MapGrid(nx=3, ny=3, x=(0.0, 2.0), y=(0.0, 2.0), snake=True)
    np.testing.assert_array_equal(grid.frame_index(), [[0, 1, 2], [5, 4, 3], [6, 7, 8]])
    assert [grid.backwards(r) for r in range(3)] == [False, True, False]
    assert grid.row_edges(0) == (-0.5, 2.5)
    assert grid.row_edges(1) == (2.5, -0.5)
    # frame order and image order are inverse of each other
    image = np.arange(9.0).reshape(3, 3)
    np.testing.assert_array_equal(grid.to_image(grid.in_frame_order(image)), image)


def test_geometry_of_the_pixels() -> None:
    grid = MapGrid(nx=5, ny=3, x=(-1.0, 1.0), y=(2.0, 0.0))
    assert grid.shape == (3, 5)
    assert grid.frames == 15
    assert grid.step == (0.5, -1.0)
    x, y = grid.centres()
    np.testing.assert_allclose(x, [-1.0, -0.5, 0.0, 0.5, 1.0])
    np.testing.assert_allclose(y, [2.0, 1.0, 0.0])
    assert grid.image_extent() == (-1.25, 1.25, 2.5, -0.5)
    one = MapGrid(nx=1, ny=1, x=(3.0, 3.0), y=(4.0, 4.0))
    assert one.step == (1.0, 1.0)
    assert one.image_extent() == (2.5, 3.5, 3.5, 4.5)


def test_a_partial_map_is_nan_where_no_frame_is() -> None:
    grid = MapGrid(nx=2, ny=2, x=(0.0, 1.0), y=(0.0, 1.0), snake=True)
    image = grid.to_image([1.0, 2.0, 3.0])
    np.testing.assert_array_equal(image, [[1.0, 2.0], [np.nan, 3.0]])
    stacked = grid.to_image(np.ones((2, 4, 3)), fill=0)
    assert stacked.shape == (2, 2, 4, 3)
    assert stacked[1].sum() == 0


def test_frames_outside_the_map_are_refused() -> None:
    grid = MapGrid(nx=2, ny=2, x=(0.0, 1.0), y=(0.0, 1.0))
    with pytest.raises(IndexError, match=r"frames 0\.\.4 outside a map of 4 pixels"):
        grid.pixel_of([0, 4])
    with pytest.raises(ValueError, match="nx, ny >= 1"):
        MapGrid(nx=0, ny=2, x=(0.0, 1.0), y=(0.0, 1.0))
    with pytest.raises(ValueError, match="kind"):
        MapGrid(nx=1, ny=1, x=(0.0, 1.0), y=(0.0, 1.0), kind="spiral")  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"x": (1.0, 1.0)}, r"x: 3 pixels from 1\.0 to 1\.0 have no width"),
        ({"y": (0.0, float("nan"))}, r"y from 0\.0 to nan: not finite"),
        ({"dwell": 0.0}, r"dwell must be a positive time in s, got 0\.0"),
        ({"dwell": float("nan")}, r"dwell must be a positive time in s, got nan"),
    ],
)
def test_rasters_that_cannot_be_flown_are_refused(
    kwargs: dict[str, object], message: str
) -> None:
    """A raster with no width would fly at zero speed (a division by zero
    deep in the plan); say which axis instead."""
    options: dict[str, object] = {"nx": 3, "ny": 2, "x": (0.0, 2.0), "y": (0.0, 1.0)}
    options.update(kwargs)
    with pytest.raises(ValueError, match=message):
        MapGrid(**options)  # type: ignore[arg-type]


def test_the_start_document_entry_round_trips_through_json() -> None:
    grid = MapGrid(
        nx=4,
        ny=3,
        x=(-1.0, 1.0),
        y=(0.0, 0.5),
        snake=True,
        kind="fly",
        fast="sx",
        slow="sy",
        x_key="pcomp-x",
        y_key="pcomp-y",
        detector="xs",
        rois=("Fe", "Cu"),
        dwell=0.01,
        units="mm",
    )
    entry = json.loads(json.dumps(grid.to_metadata()))
    assert MapGrid.from_metadata({METADATA_KEY: entry, "uid": "x"}) == grid
    assert MapGrid.from_metadata(entry) == grid
    with pytest.raises(KeyError, match="not a map"):
        MapGrid.from_metadata({"plan_name": "count"})


def test_images_fill_their_pixels() -> None:
    grid = MapGrid(nx=2, ny=2, x=(0.0, 1.0), y=(0.0, 1.0), snake=True)
    images = MapImages(grid, ["Fe", "Cu"])
    assert list(images) == ["Fe", "Cu"]
    assert images.count == 0
    images.fill([0, 2], [[1.0, 10.0], [3.0, 30.0]])
    np.testing.assert_array_equal(images["Fe"], [[1.0, np.nan], [np.nan, 3.0]])
    np.testing.assert_array_equal(images["Cu"], [[10.0, np.nan], [np.nan, 30.0]])
    assert images.count == 2
    copies = images.as_dict()
    copies["Fe"][:] = 0
    assert images["Fe"][0, 0] == 1.0
    with pytest.raises(ValueError, match="2 frames but 1 rows"):
        images.fill([0, 1], [[1.0, 2.0]])
