"""One of the concurrent writers of tests/cli/test_concurrency.py (run as its own process).

    python tests/cli/concurrency_worker.py URL LOGIN SECONDS START_AT NUMBER...

Until START_AT (a time.time() value, so all workers begin together) it waits; then for
SECONDS it picks a ticket, reads its version and tags, and toggles the tag `hot` with
`expected_version` set to what it read: each successful write changes exactly one thing (one
`tags` audit row, version + 1). A ConflictError counts as a conflict and the same ticket is
retried. Anything else is recorded as an unexpected error. At the end it prints one JSON
object on stdout.
"""

from __future__ import annotations

import asyncio
import json
import random
import sys
import time
import traceback
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from store.engine import Database  # noqa: E402
from store.service import Actor, ConflictError, Service  # noqa: E402

TAG = "hot"


async def work(
    url: str, login: str, seconds: float, start_at: float, numbers: list[int]
) -> dict[str, Any]:
    db = Database(url)
    service = Service(db)
    successes = {n: 0 for n in numbers}
    conflicts = 0
    odd_conflicts: list[str] = []
    lost_updates: list[str] = []
    errors: list[str] = []
    rng = random.Random(login)
    try:
        agent = await service.agent(login)
        actor = Actor("agent", login, agent.id)
        while time.time() < start_at:
            await asyncio.sleep(0.005)
        deadline = time.monotonic() + seconds
        number = rng.choice(numbers)
        while time.monotonic() < deadline:
            try:
                t = await service.get_ticket(number)
                has = TAG in {x.name for x in t.tags}
                change = {"tags_remove": [TAG]} if has else {"tags_add": [TAG]}
                updated = await service.update_ticket(
                    actor, number, expected_version=t.version, **change
                )
            except ConflictError as exc:
                conflicts += 1
                if exc.number != number or exc.current <= exc.expected:
                    odd_conflicts.append(str(exc))
                continue  # retry the same ticket with a fresh read
            except Exception as exc:  # noqa: BLE001 - the test reports every one
                errors.append(
                    f"{type(exc).__module__}.{type(exc).__name__}: {exc}\n"
                    + "".join(traceback.format_exception(exc))[-2000:]
                )
                if len(errors) > 50:
                    break
                continue
            if updated.version != t.version + 1 or (TAG in {x.name for x in updated.tags}) == has:
                lost_updates.append(
                    f"#{number}: read v{t.version} (hot={has}), wrote v{updated.version}"
                )
            successes[number] += 1
            number = rng.choice(numbers)
    except Exception as exc:  # noqa: BLE001
        errors.append(f"setup/teardown {type(exc).__name__}: {exc}")
    finally:
        await db.dispose()
    return {
        "login": login,
        "successes": {str(k): v for k, v in successes.items()},
        "conflicts": conflicts,
        "odd_conflicts": odd_conflicts,
        "lost_updates": lost_updates,
        "errors": errors,
    }


def main() -> None:
    url, login, seconds, start_at, *numbers = sys.argv[1:]
    result = asyncio.run(
        work(url, login, float(seconds), float(start_at), [int(n) for n in numbers])
    )
    sys.stdout.write(json.dumps(result) + "\n")


if __name__ == "__main__":
    main()
