"""Load a generated dataset with CityLearn and step it to the end; print a JSON summary.

Runs in the separate citylearn venv (numpy<2), so it imports only citylearn and the stdlib.
Usage: python citylearn_check.py <dataset>/schema.json
"""

import json
import sys

from citylearn.citylearn import CityLearnEnv


def main(schema_path):
    env = CityLearnEnv(schema=schema_path, central_agent=True)
    env.reset()
    zeros = [[0.0] * space.shape[0] for space in env.action_space]
    steps = 0
    while not env.terminated:
        env.step(zeros)
        steps += 1
    print(json.dumps({
        "steps": steps,
        "time_steps": env.time_steps,
        "buildings": [building.name for building in env.buildings],
        "chargers": sorted(c.charger_id for b in env.buildings for c in (b.electric_vehicle_chargers or [])),
        "electric_vehicles": sorted(ev.name for ev in env.electric_vehicles),
    }))


if __name__ == "__main__":
    main(sys.argv[1])
