"""The caption server's circuit breaker (pipeline/caption/backends/circuit.py) on its own; with a
real server: test_caption_robustness.py."""

import threading

from pipeline.caption.backends.circuit import CircuitBreaker


def test_circuit_breaker_counts_consecutive_failures():
    b = CircuitBreaker(3)
    b.record_failure("a")
    b.record_failure("b")
    b.record_success()  # resets the count
    b.record_failure("c")
    b.record_failure("d")
    assert b.open_reason() == ""
    b.record_failure("refused")
    assert b.open_reason() == "caption server unreachable (circuit open after 3 consecutive failures): refused"
    b.wait(60)  # returns at once: the circuit is open
    b.record_success()
    assert b.open_reason() == ""
    never = CircuitBreaker(0)
    for _ in range(10):
        never.record_failure("x")
    assert never.open_reason() == ""


def test_circuit_breaker_is_thread_safe():
    b = CircuitBreaker(4000)

    def fail():
        for _ in range(1000):
            b.record_failure("x")

    threads = [threading.Thread(target=fail) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert b.open_reason().startswith("caption server unreachable")  # exactly 4000 counted
