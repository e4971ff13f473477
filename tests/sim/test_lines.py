"""The emission-line table: its values, its look-ups, and a check against xraydb.

``xraydb`` ships the Elam, Ravel & Sieber tables (Radiat. Phys. Chem. 63, 121
(2002)); the table itself follows the X-ray Data Booklet (see
:mod:`ophyd_xspress.sim._lines`). Where the two differ by more than rounding,
the bounds below say by how much and why.
"""

from __future__ import annotations

from typing import Any

import pytest

from ophyd_xspress.sim._lines import (
    ELEMENT_LINES,
    EmissionLine,
    emission_line,
    energy_window,
    excited_lines,
)

#: |table - Elam| for every line energy (eV): Bearden's and Elam's values differ
#: by up to 3.2 eV (Sc Kβ1), far below the detector's ~140 eV resolution.
ENERGY_TOLERANCE_EV = 3.5
#: Elam has no separate Lβ2 (L3-N5): its "Lb2,15" merges it with the weaker,
#: lower Lβ15 (L3-N4), 10-25 eV below the table's Lβ2.
LB2_BELOW_EV = (0.0, 30.0)
#: |table - Elam| for absorption edges (eV): both are Bearden & Burr's values.
EDGE_TOLERANCE_EV = 0.5
#: Elam's lines standing for a table line: Kβ1 and Kβ3 are one peak (a few eV
#: apart), as in the booklet's Kβ1,3.
ELAM_NAMES = {"Kb1": ("Kb1", "Kb3"), "Lb2": ("Lb2,15",)}
#: Intensity ratios are compared within one initial vacancy (K, L3 or L2):
#: line -> the family's reference line.
REFERENCE_LINE = {
    "Ka2": "Ka1",
    "Kb1": "Ka1",
    "La2": "La1",
    "Lb2": "La1",
    "Ll": "La1",
    "Lg1": "Lb1",
}
#: Bounds of (table ratio) / (Elam ratio). The table's Kβ is the booklet's,
#: weaker than Elam's Kβ1,3 by 13 % (Br) to 50 % (Ar); the single set of L
#: intensities is within 12 % of Elam's for every L element.
INTENSITY_BOUNDS = {
    "Ka2": (0.95, 1.05),
    "Kb1": (0.45, 1.0),
    "La2": (0.85, 1.15),
    "Lb2": (0.85, 1.15),
    "Ll": (0.85, 1.15),
    "Lg1": (0.85, 1.15),
}


def test_line_table_values() -> None:
    assert emission_line("Fe", "Ka1").energy_ev == pytest.approx(6403.8, abs=0.1)
    assert emission_line("Fe", "Kb1").energy_ev == pytest.approx(7058.0, abs=0.1)
    assert emission_line("Mn", "Ka1").energy_ev == pytest.approx(5898.8, abs=0.1)
    assert emission_line("Cu", "Ka1").energy_ev == pytest.approx(8047.8, abs=0.1)
    assert emission_line("Au", "La1").energy_ev == pytest.approx(9713.3, abs=0.1)
    assert emission_line("Pb", "La1").energy_ev == pytest.approx(10551.5, abs=0.1)
    assert emission_line("Fe", "Ka1").edge_ev == 7112.0
    assert emission_line("Cu", "Ka1").edge_ev == 8979.0
    assert emission_line("Zn", "Ka1").edge_ev == 9659.0
    assert emission_line("Au", "La1").edge_ev == 11919.0
    assert emission_line("Pb", "La1").edge_ev == 13035.0
    for el in ("Ca", "Sc", "Ti", "V", "Cr", "Mn", "Fe", "Co", "Ni", "Cu", "Zn"):
        assert {li.name for li in ELEMENT_LINES[el]} >= {"Ka1", "Ka2", "Kb1"}
    for el in ("W", "Pt", "Au", "Hg", "Pb", "Bi"):
        assert {li.name for li in ELEMENT_LINES[el]} >= {
            "La1",
            "Lb1",
            "Lb2",
            "Lg1",
            "Ll",
        }


def test_every_line_lies_below_its_edge() -> None:
    for el, lines in ELEMENT_LINES.items():
        for li in lines:
            assert li.element == el
            assert 0 < li.energy_ev < li.edge_ev
            assert li.relative_intensity > 0


def test_excitation_needs_the_edge() -> None:
    assert excited_lines("Pb", 12000.0) == ()
    assert {li.name for li in excited_lines("Pb", 13100.0)} == {
        "La1",
        "La2",
        "Lb2",
        "Ll",
    }
    assert len(excited_lines("Pb", 16000.0)) == len(ELEMENT_LINES["Pb"])
    assert {li.name for li in excited_lines("Zn", 12000.0)} == {"Ka1", "Ka2", "Kb1"}
    assert excited_lines("Fe", 7000.0) == ()
    au = {li.name for li in excited_lines("Au", 12000.0)}
    assert "La1" in au  # L3 11919 < 12000
    assert "Lb1" not in au  # L2 13734 > 12000
    with pytest.raises(ValueError, match="unknown element"):
        excited_lines("Xx", 12000.0)


def test_emission_line_and_energy_window_look_up_the_table() -> None:
    fe = emission_line("Fe", "Ka1")
    assert fe == EmissionLine("Fe", "Ka1", 6403.84, 100.0, 7112.0)
    assert energy_window("Fe", "Ka1", 150.0) == (6403.84 - 150.0, 6403.84 + 150.0)
    with pytest.raises(ValueError, match="Fe has no line 'La1'"):
        emission_line("Fe", "La1")
    with pytest.raises(ValueError, match=r"unknown element 'Xx'; known: Ar, As, Au"):
        emission_line("Xx", "Ka1")


def _elam_lines(xraydb: Any, element: str) -> dict[str, Any]:
    lines: dict[str, Any] = xraydb.xray_lines(element)
    return lines


@pytest.mark.parametrize("element", sorted(ELEMENT_LINES))
def test_energies_and_edges_agree_with_xraydb(element: str) -> None:
    xraydb = pytest.importorskip("xraydb")
    elam = _elam_lines(xraydb, element)
    for line in ELEMENT_LINES[element]:
        names = ELAM_NAMES.get(line.name, (line.name,))
        theirs = elam[names[0]]
        if line.name == "Lb2":
            low, high = LB2_BELOW_EV
            assert low <= line.energy_ev - theirs.energy <= high, line
        else:
            assert line.energy_ev == pytest.approx(
                theirs.energy, abs=ENERGY_TOLERANCE_EV
            ), line
        # the edge is that of the vacancy Elam says the line fills
        edge = xraydb.xray_edge(element, theirs.initial_level).energy
        assert line.edge_ev == pytest.approx(edge, abs=EDGE_TOLERANCE_EV), line


@pytest.mark.parametrize("element", sorted(ELEMENT_LINES))
def test_relative_intensities_agree_with_xraydb(element: str) -> None:
    xraydb = pytest.importorskip("xraydb")
    elam = _elam_lines(xraydb, element)
    ours = {line.name: line.relative_intensity for line in ELEMENT_LINES[element]}

    def elam_intensity(name: str) -> float:
        return sum(elam[n].intensity for n in ELAM_NAMES.get(name, (name,)))

    checked = 0
    for name, reference in REFERENCE_LINE.items():
        if name not in ours:
            continue
        table_ratio = ours[name] / ours[reference]
        elam_ratio = elam_intensity(name) / elam_intensity(reference)
        low, high = INTENSITY_BOUNDS[name]
        assert low <= table_ratio / elam_ratio <= high, (name, table_ratio, elam_ratio)
        checked += 1
    assert checked == len(ours) - 1 - ("Lb1" in ours)  # all but the references
