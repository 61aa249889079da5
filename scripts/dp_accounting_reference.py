"""Write tests/fixtures/dp_epsilon.json: epsilon after each of a few rounds, computed with dp-accounting directly.

The privacy tests compare the epsilon a run reports with these numbers. They are dp-accounting's own answers for
the sampling, noise and delta the tests use, computed here without lightning_fedmut:

    python scripts/dp_accounting_reference.py

Cases (N clients, noise multiplier z, delta):
- "poisson_rdp" / "poisson_pld": Poisson sampling with rate q = 0.3 of N = 10 clients, z = 1.5, delta = 1e-3;
  PoissonSampledDpEvent(q, GaussianDpEvent(z)), add-or-remove-one neighbours, RDP and PLD accountants.
- "fixed_rdp": K = 3 of N = 10 clients without replacement, z = 1.5, delta = 1e-3;
  SampledWithoutReplacementDpEvent(N, K, GaussianDpEvent(z / 2)) (replace-one moves the sum by 2C), replace-one
  neighbours, RDP accountant.
"""

from __future__ import annotations

import json
from importlib.metadata import version
from pathlib import Path

import dp_accounting
from dp_accounting import pld, rdp

ROUNDS = [1, 2, 3, 4, 5]
N, Q, K, Z, DELTA = 10, 0.3, 3, 1.5, 1e-3
ADD_REMOVE = dp_accounting.NeighboringRelation.ADD_OR_REMOVE_ONE
REPLACE = dp_accounting.NeighboringRelation.REPLACE_ONE


def epsilons(make_accountant, event) -> list[float]:
    out = []
    for rounds in ROUNDS:
        accountant = make_accountant()
        accountant.compose(event, rounds)
        out.append(float(accountant.get_epsilon(DELTA)))
    return out


def main() -> None:
    poisson = dp_accounting.PoissonSampledDpEvent(Q, dp_accounting.GaussianDpEvent(Z))
    fixed = dp_accounting.SampledWithoutReplacementDpEvent(N, K, dp_accounting.GaussianDpEvent(Z / 2))
    cases = {
        "poisson_rdp": epsilons(lambda: rdp.RdpAccountant(neighboring_relation=ADD_REMOVE), poisson),
        "poisson_pld": epsilons(lambda: pld.PLDAccountant(neighboring_relation=ADD_REMOVE), poisson),
        "fixed_rdp": epsilons(lambda: rdp.RdpAccountant(neighboring_relation=REPLACE), fixed),
    }
    fixture = {"dp_accounting": version("dp-accounting"),
               "num_clients": N, "rate": Q, "clients_per_round": K, "noise_multiplier": Z, "delta": DELTA,
               "rounds": ROUNDS, "epsilon": cases}
    path = Path(__file__).resolve().parents[1] / "tests" / "fixtures" / "dp_epsilon.json"
    path.write_text(json.dumps(fixture, indent=2) + "\n")
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
