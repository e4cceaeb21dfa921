#!/usr/bin/env python3
"""Publish one switchboard send job from Python with pika.

    pip install pika
    AMQP_URL=amqp://guest:guest@127.0.0.1:5672/%2f python3 publish.py [JOB.json]

Without an argument it publishes a sample email job; with one it publishes the
job in that file (a JSON object; an `id` is added when missing). It prints the
job id. Read the outcome back from Postgres:
    SELECT status, route, provider, last_error FROM outbound_messages WHERE id = '<id>';

The topology is declared first, idempotently and with the same arguments the
worker uses (durable topic exchange `switchboard.jobs`, durable queue
`switchboard.send` bound with `#`), so a job published before any worker
ever ran waits in the queue instead of being dropped. Publisher confirms plus
`mandatory` make an unroutable or refused job an error here, not a silent loss.
"""

import json
import os
import sys
import uuid

import pika

EXCHANGE = "switchboard.jobs"
QUEUE = "switchboard.send"


def main() -> int:
    url = os.environ.get("AMQP_URL", "amqp://guest:guest@127.0.0.1:5672/%2f")
    if len(sys.argv) > 1:
        with open(sys.argv[1], encoding="utf-8") as f:
            job = json.load(f)
    else:
        job = {
            "agent_id": "agent-42",
            "channel": "email",
            "to": "buyer@example.com",
            "subject": "New listing",
            "text": "3 bed, 2 bath, open house Saturday.",
            "category": "marketing",
        }
    # The id is the idempotency key: keep it when you retry a publish, so the
    # job is sent at most once however many copies arrive.
    job.setdefault("id", str(uuid.uuid4()))

    conn = pika.BlockingConnection(pika.URLParameters(url))
    try:
        ch = conn.channel()
        ch.exchange_declare(exchange=EXCHANGE, exchange_type="topic", durable=True)
        ch.queue_declare(queue=QUEUE, durable=True)
        ch.queue_bind(queue=QUEUE, exchange=EXCHANGE, routing_key="#")
        ch.confirm_delivery()
        try:
            ch.basic_publish(
                exchange=EXCHANGE,
                routing_key=job["agent_id"],
                body=json.dumps(job).encode("utf-8"),
                properties=pika.BasicProperties(
                    content_type="application/json",
                    delivery_mode=2,  # persistent
                    message_id=job["id"],
                ),
                mandatory=True,
            )
        except pika.exceptions.UnroutableError:
            print(f"job {job['id']} was returned: no queue is bound to {EXCHANGE}", file=sys.stderr)
            return 1
        except pika.exceptions.NackError:
            print(f"job {job['id']} was refused by RabbitMQ (nack)", file=sys.stderr)
            return 1
    finally:
        conn.close()
    print(job["id"])
    return 0


if __name__ == "__main__":
    sys.exit(main())
