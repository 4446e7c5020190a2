"""The one registry mechanism (`iamt.registry.Registry`), checked on the project's three real
registries: perturbations, mask transforms and native corruptions.

Nothing is removed from (or left in) a real registry: a duplicate is the re-registration of an
existing name, which must raise and leave the registry as it was.
"""

from __future__ import annotations

import subprocess
import sys
from dataclasses import dataclass
from typing import Any

import pytest

from iamt.registry import DuplicateEntryError, Registry
from iamt.transforms import TRANSFORMS, TransformSpecError, parse_transform, register_transform
from iamt.vocabulary import StrengthAxis
from robustness.perturbations import (
    PERTURBATIONS,
    Family,
    FixedEpsilonAttack,
    MinimisationAttack,
    PerturbationError,
    get_perturbation_class,
    list_perturbations,
    register_perturbation,
)
from robustness.perturbations.native import NATIVE_CORRUPTIONS, register_native


@dataclass(frozen=True)
class Case:
    """One real registry, how to register into it, and the error an unknown name raises."""

    registry: Registry[Any]
    error: type[ValueError]

    def register_again(self, name: str) -> None:
        """Register a second entry under `name` through the registry's own decorator."""
        entry = self.registry.get(name)
        if self.registry is PERTURBATIONS:
            register_perturbation(entry)
        elif self.registry is TRANSFORMS:
            register_transform(entry)
        else:
            register_native(
                name, fidelity=entry.fidelity, default=entry.default, on_grid=entry.on_grid
            )(entry.function)


CASES = {
    "perturbations": Case(PERTURBATIONS, PerturbationError),
    "mask transforms": Case(TRANSFORMS, TransformSpecError),
    "native corruptions": Case(NATIVE_CORRUPTIONS, PerturbationError),
}


@pytest.fixture(params=sorted(CASES))
def case(request: pytest.FixtureRequest) -> Case:
    return CASES[request.param]


def test_a_registry_is_not_empty(case: Case) -> None:
    assert len(case.registry) > 0
    assert list(case.registry) == case.registry.names() == sorted(case.registry.names())


def test_a_duplicate_name_raises_and_changes_nothing(case: Case) -> None:
    before = case.registry.items()
    for name in case.registry.names():
        with pytest.raises(DuplicateEntryError, match=rf"'{name}' is registered twice"):
            case.register_again(name)
        with pytest.raises(DuplicateEntryError):
            case.registry.add(name, case.registry.get(name))
    assert case.registry.items() == before


def test_an_unknown_name_raises_the_registrys_error_naming_every_valid_one(case: Case) -> None:
    bad = "no_such_entry"
    assert bad not in case.registry
    with pytest.raises(case.error) as error:
        case.registry.get(bad)
    message = str(error.value)
    assert repr(bad) in message
    missing = [name for name in case.registry.names() if name not in message]
    assert not missing, missing


def test_the_friendly_lookups_name_every_valid_entry_too() -> None:
    """`get_perturbation_class` groups the names by family; a spec parse lists the transforms."""
    with pytest.raises(PerturbationError) as error:
        get_perturbation_class("gausian")
    assert "'gausian'" in str(error.value)
    assert all(name in str(error.value) for name in PERTURBATIONS.names())
    with pytest.raises(TransformSpecError) as spec_error:
        parse_transform("sharpen:k=4")
    assert "'sharpen'" in str(spec_error.value)
    assert all(name in str(spec_error.value) for name in TRANSFORMS.names())


def test_importing_the_package_registers_every_module() -> None:
    """A fresh interpreter that only imports the package sees every family and every native
    corruption: no module has to be imported (or called) first to register."""
    script = (
        "import robustness.perturbations as p\n"
        "from iamt.vocabulary import Family\n"
        "from robustness.perturbations.native import native_names\n"
        "print(len(p.list_perturbations()), len(native_names()),"
        " *(len(p.list_perturbations(f)) for f in"
        " (Family.NOISE, Family.CORRUPTION, Family.ADVERSARIAL)))\n"
    )
    counts = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, check=True
    ).stdout.split()
    expected = [
        len(list_perturbations()),
        len(NATIVE_CORRUPTIONS),
        *(
            len(list_perturbations(f))
            for f in (Family.NOISE, Family.CORRUPTION, Family.ADVERSARIAL)
        ),
    ]
    assert [int(count) for count in counts] == expected
    assert all(count > 0 for count in expected)


def test_fixed_epsilon_and_minimisation_attacks_partition_the_attacks() -> None:
    attacks = list_perturbations(Family.ADVERSARIAL)
    fixed = {n for n in attacks if issubclass(get_perturbation_class(n), FixedEpsilonAttack)}
    minimising = {n for n in attacks if issubclass(get_perturbation_class(n), MinimisationAttack)}
    assert fixed | minimising == set(attacks)
    assert not fixed & minimising
    assert {"fgsm", "linf_pgd", "autoattack_linf"} <= fixed
    assert {"l2_deepfool", "l2_cw", "boundary"} <= minimising


@pytest.mark.parametrize("name", list_perturbations())
def test_every_perturbation_s_axis_is_its_family_s(name: str) -> None:
    """A job's strength goes in its perturbation's axis column; readers of the CSVs, which know
    only the family, find it through `StrengthAxis.of_family`: the two must agree."""
    cls = get_perturbation_class(name)
    assert cls.axis is StrengthAxis.of_family(cls.family)
