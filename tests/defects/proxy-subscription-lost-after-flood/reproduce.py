#!/usr/bin/env python3
"""Reproduction: after a flood of subscriptions, a libzmq XSUB/XPUB proxy can stop forwarding a
new subscription upstream.

usage: reproduce.py [ROUNDS]

Self-contained (Python 3 and pyzmq): each round builds a publisher (PUB, one tick every 10 ms from
its own thread), a proxy (zmq.proxy between an XSUB connected to the publisher and an XPUB), and a
rogue downstream XSUB that sends 10000 subscribe/cancel pairs for one topic as fast as it can.
Then a correct SUB connects to the proxy, subscribes to the ticks' topic and waits 5 s. Exit
status 0 when at least one round's subscriber got nothing (the defect is present), 1 otherwise.
"""
import sys
import threading

import zmq


def publisher(context, endpoint, stop):
    pub = context.socket(zmq.PUB)
    pub.linger = 0
    pub.bind(endpoint)
    while not stop.wait(0.01):
        pub.send_multipart([b"AAPL\0", b"tick"])
    pub.close()


def proxy(context, upstream, downstream):
    xsub, xpub = context.socket(zmq.XSUB), context.socket(zmq.XPUB)
    xsub.linger = xpub.linger = 0
    xsub.connect(upstream)
    xpub.bind(downstream)
    try:
        zmq.proxy(xsub, xpub)
    except zmq.ContextTerminated:
        pass
    xsub.close()
    xpub.close()


def one_round(number):
    context = zmq.Context()
    stop = threading.Event()
    upstream, downstream = f"inproc://up{number}", f"tcp://127.0.0.1:{5700 + number}"
    threads = [threading.Thread(target=publisher, args=(context, upstream, stop))]
    threads[0].start()
    threads.append(threading.Thread(target=proxy, args=(context, upstream, downstream), daemon=True))
    threads[1].start()
    rogue = context.socket(zmq.XSUB)
    rogue.sndhwm = 0
    rogue.connect(downstream)
    for _ in range(10000):
        rogue.send(b"\x01FLOOD\0")
        rogue.send(b"\x00FLOOD\0")
    sub = context.socket(zmq.SUB)
    sub.linger = 0
    sub.subscribe(b"AAPL\0")
    sub.connect(downstream)
    heard = sub.poll(5000)
    stop.set()
    threads[0].join()
    rogue.close(linger=0)
    sub.close()
    context.term()
    return heard


def main():
    rounds = int(sys.argv[1]) if len(sys.argv) > 1 else 10
    silent = [number for number in range(rounds) if not one_round(number)]
    print(f"{len(silent)} of {rounds} subscribers heard nothing" + (f" (rounds {silent})" if silent else ""))
    sys.exit(0 if silent else 1)


if __name__ == "__main__":
    main()
