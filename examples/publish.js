#!/usr/bin/env node
// Publish one switchboard send job from Node with amqplib.
//
//   npm install            # in this folder: installs amqplib (package.json)
//   AMQP_URL=amqp://guest:guest@127.0.0.1:5672/%2f node publish.js [JOB.json]
//
// Without an argument it publishes a sample SMS job; with one it publishes the
// job in that file (a JSON object; an `id` is added when missing). It prints
// the job id. Read the outcome back from Postgres:
//   SELECT status, route, provider, last_error FROM outbound_messages WHERE id = '<id>';
//
// The topology is declared first, idempotently and with the same arguments the
// worker uses (durable topic exchange `switchboard.jobs`, durable queue
// `switchboard.send` bound with `#`), so a job published before any worker
// ever ran waits in the queue. With `mandatory`, RabbitMQ returns a job no
// queue takes *and still confirms it*: the `return` handler below is what
// turns that into an error instead of a silent loss.
"use strict";

const fs = require("fs");
const { randomUUID } = require("crypto");
const amqp = require("amqplib");

const EXCHANGE = "switchboard.jobs";
const QUEUE = "switchboard.send";

async function main() {
  const url = process.env.AMQP_URL || "amqp://guest:guest@127.0.0.1:5672/%2f";
  const job = process.argv[2]
    ? JSON.parse(fs.readFileSync(process.argv[2], "utf8"))
    : {
        agent_id: "agent-42",
        channel: "sms",
        to: "+14155550123",
        text: "Your viewing is confirmed for 3pm",
        category: "transactional",
      };
  // The id is the idempotency key: keep it when you retry a publish.
  job.id = job.id || randomUUID();

  const conn = await amqp.connect(url);
  try {
    const ch = await conn.createConfirmChannel();
    await ch.assertExchange(EXCHANGE, "topic", { durable: true });
    await ch.assertQueue(QUEUE, { durable: true });
    await ch.bindQueue(QUEUE, EXCHANGE, "#");

    // RabbitMQ sends basic.return before the confirm of the same message.
    const returned = new Set();
    ch.on("return", (msg) => returned.add(msg.properties.messageId));

    ch.publish(EXCHANGE, job.agent_id, Buffer.from(JSON.stringify(job)), {
      contentType: "application/json",
      persistent: true, // delivery_mode 2
      messageId: job.id,
      mandatory: true,
    });
    await ch.waitForConfirms(); // rejects when RabbitMQ nacks
    if (returned.has(job.id)) {
      throw new Error(`job ${job.id} was returned: no queue is bound to ${EXCHANGE}`);
    }
    await ch.close();
  } finally {
    await conn.close();
  }
  console.log(job.id);
}

main().catch((err) => {
  console.error(err.message || err);
  process.exitCode = 1;
});
