'use strict';
// @azure/event-hubs (as published): an EventHubConsumerClient reading one partition until EXPECTED events
// arrived; prints them as one JSON line. Env: EVENTHUB_CONNECTION_STRING, PARTITION, EXPECTED,
// START ('earliest' | 'latest' | a sequence number, exclusive); TLS trust through NODE_EXTRA_CA_CERTS.
const { EventHubConsumerClient, earliestEventPosition, latestEventPosition } = require('@azure/event-hubs');

const client = new EventHubConsumerClient('$Default', process.env.EVENTHUB_CONNECTION_STRING);
const expected = Number(process.env.EXPECTED);
const start = process.env.START;
const startPosition = start === 'earliest' ? earliestEventPosition
  : start === 'latest' ? latestEventPosition : { sequenceNumber: Number(start), isInclusive: false };
const events = [];
const done = async (code, value) => {
  console.log(JSON.stringify(value));
  await client.close();
  process.exit(code);
};
setTimeout(() => done(2, { error: 'timeout', received: events }), 30000);

const subscription = client.subscribe(process.env.PARTITION, {
  processInitialize: async () => console.log(JSON.stringify({ ready: true })),
  processEvents: async (received) => {
    for (const event of received) {
      events.push({
        body: Buffer.isBuffer(event.body) ? event.body.toString() : event.body,
        properties: event.properties,
        systemProperties: event.systemProperties,
        sequenceNumber: event.sequenceNumber,
        offset: event.offset,
        contentType: event.contentType,
        messageId: event.messageId,
      });
    }
    if (events.length >= expected) {
      await subscription.close();
      await done(0, events);
    }
  },
  processError: async (err) => done(2, { error: err.message, code: err.code }),
}, { startPosition, maxWaitTimeInSeconds: 1 });
