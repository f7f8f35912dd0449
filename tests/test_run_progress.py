"""`run` says how far it is while no utterance comes, and stays quiet while they do."""

from __future__ import annotations

import asyncio

from actors.run_file import _progress


def test_progress_lines_come_only_while_no_utterance_arrives() -> None:
    lines: list[str] = []
    events: list[dict] = []

    async def main() -> None:
        task = asyncio.create_task(_progress(events, 75.0, lambda: 12.5, lines.append, every_s=0.05))
        await asyncio.sleep(0.08)  # one quiet period
        events.append({"type": "emotion"})
        await asyncio.sleep(0.05)  # an utterance came in this period: no line
        await asyncio.sleep(0.05)  # quiet again
        task.cancel()

    asyncio.run(main())
    assert lines[0] == "... 00:12.5 of 01:15.0 replayed, 0 utterance(s) so far"
    assert lines[-1] == "... 00:12.5 of 01:15.0 replayed, 1 utterance(s) so far"
    assert 2 <= len(lines) <= 3
