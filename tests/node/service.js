// Azure's published Node.js service SDKs (azure-iothub, azure-iot-provisioning-service) against a local cloud.
// Run by tests/cloud/test_node_service.py: `node service.js STEP` with the connection strings and names in
// the environment (NODE_EXTRA_CA_CERTS makes Node trust the cloud's server CA); prints one JSON line.
'use strict';
const { Registry, Client } = require('azure-iothub');
const { ProvisioningServiceClient } = require('azure-iot-provisioning-service');

const env = process.env;

function errorOf(err) {
  return { name: err.constructor.name, status: err.response && err.response.statusCode, body: err.responseBody };
}

async function hub() {
  const registry = Registry.fromConnectionString(env.IOTHUB_CONNECTION_STRING);
  const deviceId = env.DEVICE_ID;
  const device = (await registry.get(deviceId)).responseBody;
  const list = (await registry.list()).responseBody.map((d) => d.deviceId);
  const twin = (await registry.getTwin(deviceId)).responseBody;
  const updated = (await registry.updateTwin(deviceId, { tags: { node: true } }, twin.etag)).responseBody;
  const query = registry.createQuery(`SELECT * FROM devices WHERE tags.node = true`, 10);
  const page = await query.nextAsTwin();
  const client = Client.fromConnectionString(env.IOTHUB_CONNECTION_STRING);
  const method = await client.invokeDeviceMethod(deviceId, {
    methodName: 'ping', payload: { from: 'node' }, responseTimeoutInSeconds: 10,
  });
  let missing;
  try {
    await registry.get('no-such-device');
  } catch (err) {
    missing = errorOf(err);
  }
  let stale;
  try {
    await registry.updateTwin(deviceId, { tags: { node: false } }, twin.etag);
  } catch (err) {
    stale = errorOf(err);
  }
  return {
    device: { deviceId: device.deviceId, status: device.status, connectionState: device.connectionState },
    list,
    tags: updated.tags,
    queried: page.result.map((t) => t.deviceId),
    method: method.result,
    missing: { name: missing.name, status: missing.status },
    stale: { name: stale.name, status: stale.status },
  };
}

async function dps() {
  const service = ProvisioningServiceClient.fromConnectionString(env.DPS_CONNECTION_STRING);
  const groupId = env.GROUP_ID;
  const group = {
    enrollmentGroupId: groupId,
    attestation: { type: 'x509', x509: { caReferences: { primary: env.CA_NAME } } },
    provisioningStatus: 'enabled',
    initialTwin: { tags: { release: 'node' }, properties: { desired: { interval: 5 } } },
  };
  const created = (await service.createOrUpdateEnrollmentGroup(group)).responseBody;
  const fetched = (await service.getEnrollmentGroup(groupId)).responseBody;
  let again;
  try {
    await service.createOrUpdateEnrollmentGroup(group); // no etag: create, and the ID exists
  } catch (err) {
    again = errorOf(err);
  }
  const disabled = (await service.createOrUpdateEnrollmentGroup({ ...fetched, provisioningStatus: 'disabled' }))
    .responseBody;
  const groups = (await service.createEnrollmentGroupQuery({ query: '*' }).next()).responseBody
    .map((g) => g.enrollmentGroupId);
  const individual = (await service.createOrUpdateIndividualEnrollment({
    registrationId: env.BLOCKED_ID,
    attestation: { type: 'x509', x509: { clientCertificates: {} } },
    provisioningStatus: 'disabled',
  })).responseBody;
  const gotIndividual = (await service.getIndividualEnrollment(env.BLOCKED_ID)).responseBody;
  const registrations = (await service
    .createEnrollmentGroupDeviceRegistrationStateQuery({ query: '*' }, env.REGISTERED_GROUP_ID).next()).responseBody
    .map((r) => ({ registrationId: r.registrationId, deviceId: r.deviceId, status: r.status }));
  const state = (await service.getDeviceRegistrationState(env.REGISTERED_ID)).responseBody;
  return {
    created: { id: created.enrollmentGroupId, status: created.provisioningStatus, twin: created.initialTwin },
    fetchedEtag: fetched.etag === created.etag,
    again: { name: again.name, status: again.status },
    disabled: disabled.provisioningStatus,
    groups,
    individual: [individual.provisioningStatus, gotIndividual.registrationId],
    registrations,
    state: { registrationId: state.registrationId, assignedHub: state.assignedHub },
  };
}

// A group attested by its own CA certificate (signingCertificates): created with the PEM, read back with the
// info DPS computes (never the PEM), a bad PEM refused, and disabled + enabled again from the group as read.
async function signing() {
  const service = ProvisioningServiceClient.fromConnectionString(env.DPS_CONNECTION_STRING);
  const groupId = env.GROUP_ID;
  const group = {
    enrollmentGroupId: groupId,
    attestation: { type: 'x509', x509: { signingCertificates: { primary: { certificate: env.SIGNING_PEM } } } },
    provisioningStatus: 'enabled',
  };
  const created = (await service.createOrUpdateEnrollmentGroup(group)).responseBody;
  const fetched = (await service.getEnrollmentGroup(groupId)).responseBody;
  const queried = (await service.createEnrollmentGroupQuery({ query: '*' }).next()).responseBody
    .find((g) => g.enrollmentGroupId === groupId);
  let bad;
  try {
    const junk = { primary: { certificate: '-----BEGIN CERTIFICATE-----\nbm90IGEgY2VydA==\n-----END CERTIFICATE-----' } };
    await service.createOrUpdateEnrollmentGroup({ enrollmentGroupId: 'node-bad-pem',
      attestation: { type: 'x509', x509: { signingCertificates: junk } } });
  } catch (err) {
    bad = errorOf(err);
  }
  const disabled = (await service.createOrUpdateEnrollmentGroup({ ...fetched, provisioningStatus: 'disabled' }))
    .responseBody;
  const enabled = (await service.createOrUpdateEnrollmentGroup({ ...disabled, provisioningStatus: 'enabled' }))
    .responseBody;
  const signingOf = (g) => g.attestation.x509.signingCertificates;
  return {
    created: signingOf(created),
    fetched: signingOf(fetched),
    queried: signingOf(queried),
    bad: { status: bad.status, body: typeof bad.body === 'string' ? JSON.parse(bad.body) : bad.body },
    toggled: [disabled.provisioningStatus, enabled.provisioningStatus, signingOf(enabled).primary.info.sha256Thumbprint],
  };
}

const steps = { hub, dps, signing };
steps[process.argv[2]]().then(
  (result) => { console.log(JSON.stringify(result)); },
  (err) => { console.error(err && err.stack); console.log(JSON.stringify({ error: errorOf(err) })); process.exit(1); },
);
