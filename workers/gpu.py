"""Entry point of a worker process (one per GPU): ``python -m workers.gpu`` or ``seedq worker``.

Loads the target and draft models once (``seedq.decoding.factory.load_generator``) and runs
:class:`seedq.service.worker.TreeWorker`. Options override the ``SEEDQ_*`` settings.
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence

from seedq.decoding.types import GroupGenerator
from seedq.service.context import open_services
from seedq.service.worker import GeneratorFactory, TreeWorker
from seedq.settings import Settings
from workers import testing

log = logging.getLogger("workers.gpu")


def generator_factory(settings: Settings) -> GeneratorFactory:
    """The real generator, or the canned test double when the test hook asks for it."""
    canned = testing.generator_factory_from_env()
    if canned is not None:
        log.warning("using the canned test generator (%s is set)", testing.TEST_GENERATOR_ENV)
        return canned
    config = settings.engine_config()

    def load() -> GroupGenerator:
        from seedq.decoding.factory import load_generator

        return load_generator(config, settings.decoding)

    return load


def run_worker(
    settings: Settings,
    *,
    burst: bool = False,
    round_size: int | None = None,
    queue: str | None = None,
    name: str | None = None,
    factory: GeneratorFactory | None = None,
) -> int:
    """Run a worker until stopped (or drained with ``burst``); returns jobs completed."""
    services = open_services(settings)
    try:
        worker = TreeWorker(
            services,
            factory or generator_factory(settings),
            queue_name=queue,
            round_size=round_size,
            name=name,
        )
        worker.work(burst=burst)
        return worker.completed
    finally:
        services.close()


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="workers.gpu", description=__doc__)
    parser.add_argument("--burst", action="store_true", help="exit when the queue is empty")
    parser.add_argument("--round-size", type=int, default=None, help="trees run at once")
    parser.add_argument("--queue", default=None, help="queue name (default SEEDQ_QUEUE)")
    parser.add_argument("--name", default=None, help="worker name (default host.pid.random)")
    parser.add_argument("--metrics-port", type=int, default=None,
                        help="serve Prometheus metrics on this port (default SEEDQ_METRICS_PORT)")
    parser.add_argument("-v", "--verbose", action="count", default=0, help="debug logging")
    parser.add_argument("-q", "--quiet", action="count", default=0, help="no job lines")
    args = parser.parse_args(argv)
    from seedq import redact
    from seedq.cli.group import set_log_level

    redact.install()  # no URL password in any log line or error

    # one INFO line per job by default, like `rq worker`
    set_log_level(logging.INFO - 10 * min(args.verbose, 1) + 10 * min(args.quiet, 2), logging.INFO)
    settings = Settings.from_env().with_overrides(metrics_port=args.metrics_port)
    run_worker(
        settings, burst=args.burst, round_size=args.round_size, queue=args.queue, name=args.name
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
