"""nox sessions: tests per backend, cross-backend agreement, lint, benchmarks (not run by default).

Every install goes through constraints.txt, which pins the CPU build of torch.
"""

import nox

nox.options.sessions = ["tests", "agreement", "lint"]
CONSTRAINTS = ("-c", "constraints.txt")


@nox.session
@nox.parametrize("backend", ["numpy", "torch", "jax"])
def tests(session: nox.Session, backend: str) -> None:
    extra = "test" if backend == "numpy" else f"{backend},test"
    session.install(*CONSTRAINTS, "-e", f".[{extra}]")
    session.run("pytest", "-m", backend, *session.posargs)


@nox.session
def agreement(session: nox.Session) -> None:
    session.install(*CONSTRAINTS, "-e", ".[all,test]")
    session.run("pytest", "-k", "agree", *session.posargs)


@nox.session
def lint(session: nox.Session) -> None:
    session.install("ruff")
    session.run("ruff", "check", "src", "tests", "examples", "benchmarks")


@nox.session(default=False)
def bench(session: nox.Session) -> None:
    session.install(*CONSTRAINTS, "-e", ".[all]")
    session.run("python", "benchmarks/run_all.py", *session.posargs)
