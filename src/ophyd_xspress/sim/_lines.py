"""X-ray emission lines of the simulated sample: the one table of line energies.

Sources (all values in eV):

* line energies: the X-ray Data Booklet (A. C. Thompson et al., Lawrence
  Berkeley National Laboratory, 3rd ed. 2009), Table 1-2, whose values are
  J. A. Bearden, Rev. Mod. Phys. 39, 78 (1967);
* absorption edges: the same booklet, Table 1-1 (electron binding energies,
  after Bearden & Burr, Rev. Mod. Phys. 39, 125 (1967));
* relative intensities: rounded values, 100 for the strongest line of a family,
  after the booklet's Table 1-3. K lines: Kα2 50 and Kβ1 (standing for the
  unresolved Kβ1,3 pair) from 10 (Ar) to 20 (Br); L lines: one approximate set
  for every element, close to the booklet's gold values (Lα1 100, Lα2 11,
  Lβ1 67, Lβ2 22, Lγ1 13, Lℓ 5).

``tests/sim/test_lines.py`` checks every value against the Elam, Ravel & Sieber
tables (Radiat. Phys. Chem. 63, 121 (2002)) as shipped by ``xraydb``: energies
within 3.5 eV (Lβ2 within 30 eV: Elam merges Lβ2 and Lβ15 into one line),
edges within 0.5 eV, intensity ratios within one shell to the tolerances that
test states. The simulator's spectra, the default hardware windows and the
demo's ROIs all read this table.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import Final

__all__ = [
    "ELEMENT_LINES",
    "EmissionLine",
    "emission_line",
    "energy_window",
    "excited_lines",
    "lines_of",
]


@dataclass(frozen=True, slots=True)
class EmissionLine:
    """One fluorescence line.

    ``relative_intensity`` is relative to the strongest line of the family (100);
    ``edge_ev`` is the absorption edge that must be exceeded to emit the line.
    """

    element: str
    name: str
    energy_ev: float
    relative_intensity: float
    edge_ev: float


# K family: Ka1, Ka2, Kb1 energies, K edge, Kb1 intensity (Ka1 = 100, Ka2 = 50).
_K_TABLE: Final[dict[str, tuple[float, float, float, float, float]]] = {
    "Ar": (2957.70, 2955.63, 3190.5, 3205.9, 10.0),
    "K": (3313.8, 3311.1, 3589.6, 3608.4, 11.0),
    "Ca": (3691.68, 3688.09, 4012.7, 4038.5, 13.0),
    "Sc": (4090.6, 4086.1, 4460.5, 4492.0, 15.0),
    "Ti": (4510.84, 4504.86, 4931.81, 4966.0, 15.0),
    "V": (4952.20, 4944.64, 5427.29, 5465.0, 15.0),
    "Cr": (5414.72, 5405.51, 5946.71, 5989.0, 15.0),
    "Mn": (5898.75, 5887.65, 6490.45, 6539.0, 17.0),
    "Fe": (6403.84, 6390.84, 7057.98, 7112.0, 17.0),
    "Co": (6930.32, 6915.30, 7649.43, 7709.0, 17.0),
    "Ni": (7478.15, 7460.89, 8264.66, 8333.0, 17.0),
    "Cu": (8047.78, 8027.83, 8905.29, 8979.0, 17.0),
    "Zn": (8638.86, 8615.78, 9572.0, 9659.0, 17.0),
    "Ga": (9251.74, 9224.82, 10264.2, 10367.0, 18.0),
    "Ge": (9886.42, 9855.32, 10982.1, 11103.0, 19.0),
    "As": (10543.72, 10507.99, 11726.2, 11867.0, 19.0),
    "Se": (11222.4, 11181.4, 12495.9, 12658.0, 20.0),
    "Br": (11924.2, 11877.6, 13291.4, 13474.0, 20.0),
}

# L family: La1, La2, Lb1, Lb2, Lg1, Ll energies, then the L3 and L2 edges.
# La1, La2, Lb2 and Ll fill L3 vacancies; Lb1 and Lg1 fill L2 vacancies.
_L_TABLE: Final[
    dict[str, tuple[float, float, float, float, float, float, float, float]]
] = {
    "W": (8397.6, 8335.2, 9672.35, 9961.5, 11285.9, 7387.8, 10207.0, 11544.0),
    "Pt": (9442.3, 9361.8, 11070.7, 11250.5, 12942.0, 8268.0, 11564.0, 13273.0),
    "Au": (9713.3, 9628.0, 11442.3, 11584.7, 13381.7, 8494.0, 11919.0, 13734.0),
    "Hg": (9988.8, 9897.6, 11822.6, 11924.1, 13830.1, 8721.0, 12284.0, 14209.0),
    "Pb": (10551.5, 10449.5, 12613.7, 12622.6, 14764.4, 9184.5, 13035.0, 15200.0),
    "Bi": (10838.8, 10730.9, 13023.5, 12979.9, 15247.7, 9420.4, 13419.0, 15711.0),
}
# Approximate relative intensities of La1, La2, Lb1, Lb2, Lg1, Ll.
_L_INTENSITY: Final = (100.0, 11.0, 67.0, 22.0, 13.0, 5.0)


def _build_lines() -> Mapping[str, tuple[EmissionLine, ...]]:
    table: dict[str, tuple[EmissionLine, ...]] = {}
    for el, (ka1, ka2, kb1, edge, kb_rel) in _K_TABLE.items():
        table[el] = (
            EmissionLine(el, "Ka1", ka1, 100.0, edge),
            EmissionLine(el, "Ka2", ka2, 50.0, edge),
            EmissionLine(el, "Kb1", kb1, kb_rel, edge),
        )
    for el, (la1, la2, lb1, lb2, lg1, ll, l3, l2) in _L_TABLE.items():
        i_la1, i_la2, i_lb1, i_lb2, i_lg1, i_ll = _L_INTENSITY
        table[el] = (
            EmissionLine(el, "La1", la1, i_la1, l3),
            EmissionLine(el, "La2", la2, i_la2, l3),
            EmissionLine(el, "Lb1", lb1, i_lb1, l2),
            EmissionLine(el, "Lb2", lb2, i_lb2, l3),
            EmissionLine(el, "Lg1", lg1, i_lg1, l2),
            EmissionLine(el, "Ll", ll, i_ll, l3),
        )
    return MappingProxyType(table)


ELEMENT_LINES: Final[Mapping[str, tuple[EmissionLine, ...]]] = _build_lines()
"""Element symbol -> its emission lines (K family up to Br, L family for W-Bi)."""


def lines_of(element: str) -> tuple[EmissionLine, ...]:
    """The lines of ``element``; ``ValueError`` naming the known elements."""
    try:
        return ELEMENT_LINES[element]
    except KeyError:
        known = ", ".join(sorted(ELEMENT_LINES))
        raise ValueError(f"unknown element {element!r}; known: {known}") from None


def emission_line(element: str, line: str) -> EmissionLine:
    """Line ``line`` (``"Ka1"``, ``"La1"`` ...) of ``element``.

    >>> emission_line("Fe", "Ka1").energy_ev
    6403.84
    """
    for candidate in lines_of(element):
        if candidate.name == line:
            return candidate
    raise ValueError(f"{element} has no line {line!r}")


def excited_lines(element: str, incident_energy_ev: float) -> tuple[EmissionLine, ...]:
    """Lines of ``element`` whose edge lies below ``incident_energy_ev``."""
    return tuple(li for li in lines_of(element) if li.edge_ev < incident_energy_ev)


def energy_window(element: str, line: str, half_width_ev: float) -> tuple[float, float]:
    """``(low, high)`` eV, ``half_width_ev`` either side of a line: an ROI.

    >>> energy_window("Fe", "Ka1", 150.0)
    (6253.84, 6553.84)
    """
    energy = emission_line(element, line).energy_ev
    return energy - half_width_ev, energy + half_width_ev
