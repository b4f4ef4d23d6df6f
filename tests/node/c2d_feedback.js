'use strict';
// azure-iothub (Azure's Node service SDK, as published) against a hub: Client.send of one C2D message
// and, with FEEDBACK=1, the feedback batch that comes back for it. Prints one JSON line per outcome.
// Env: IOTHUB_CONNECTION_STRING, DEVICE_ID, MESSAGE_ID, FEEDBACK; TLS trust through NODE_EXTRA_CA_CERTS.
const { Client } = require('azure-iothub');
const { Message } = require('azure-iot-common');

const client = Client.fromConnectionString(process.env.IOTHUB_CONNECTION_STRING);
const print = (value) => console.log(JSON.stringify(value));
const finish = (code) => client.close(() => process.exit(code));
const fail = (step, err) => {
  print({ step, error: err.constructor.name, message: String(err.message || err) });
  finish(2);
};
setTimeout(() => fail('wait', new Error('no answer within 30 s')), 30000);

function send() {
  const message = new Message(Buffer.from('from node'));
  message.messageId = process.env.MESSAGE_ID;
  message.correlationId = 'node-cid';
  message.contentType = 'text/plain';
  message.ack = 'positive';
  message.properties.add('origin', 'node');
  client.send(process.env.DEVICE_ID, message, (err) => {
    if (err) return fail('send', err);
    print({ sent: message.messageId });
    if (!process.env.FEEDBACK) finish(0);
  });
}

client.open((err) => {
  if (err) return fail('open', err);
  if (!process.env.FEEDBACK) return send();
  client.getFeedbackReceiver((err, receiver) => {
    if (err) return fail('feedback', err);
    receiver.on('errorReceived', (e) => fail('feedback', e));
    receiver.on('message', (msg) => {
      const records = msg.data ? JSON.parse(msg.data.toString()) : msg;
      receiver.complete(msg, () => {
        print({ feedback: records, contentType: msg.contentType });
        finish(0);
      });
    });
    send();
  });
});
