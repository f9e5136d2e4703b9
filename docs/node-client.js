// A simdex client in Node.js, built from the shipped .proto alone (@grpc/grpc-js + @grpc/proto-loader).
// See docs/other-languages.md; tests/packaging/test_other_languages.py runs it against a real server.
//
//   node node-client.js PROTO TARGET SPEC.json
//
// PROTO is the file `simdex proto --out DIR` writes (DIR/simdex/v1/simdex.proto). SPEC.json names a collection to
// create and fill, and the queries to run: {"collection", "metric", "ids", "vectors" (rows of numbers),
// "metadata" (objects), "queries" (rows), "k", "filter" (an object)}. It prints one JSON object: the hits of the
// queries, unfiltered and filtered, and the error a filter passed as an object (not as JSON text) gets.
'use strict';
const fs = require('fs');
const grpc = require('@grpc/grpc-js');
const protoLoader = require('@grpc/proto-loader');

// keepCase: the field names of the .proto (ef_search, include_metadata); longs as Numbers (counts, seq)
const definition = protoLoader.loadSync(process.argv[2], {keepCase: true, longs: Number, defaults: true});
const simdex = grpc.loadPackageDefinition(definition).simdex.v1;

// Matrix: row-major little-endian float32 bytes, with the shape [n, d].
function matrix(rows) {
  const d = rows[0].length;
  const data = Buffer.alloc(4 * rows.length * d);
  rows.forEach((row, i) => row.forEach((v, j) => data.writeFloatLE(v, 4 * (i * d + j))));
  return {data, shape: [rows.length, d]};
}

// QueryHits.distances: one little-endian float32 per id, read in the collection's metric.
function floats(bytes) {
  const out = [];
  for (let i = 0; i < bytes.length; i += 4) out.push(bytes.readFloatLE(i));
  return out;
}

function unary(client, method, request) {
  return new Promise((resolve, reject) =>
    client[method](request, (err, response) => (err ? reject(err) : resolve(response))));
}

// Upsert is a client stream: every message written before end() belongs to one transaction.
function upsert(client, messages) {
  return new Promise((resolve, reject) => {
    const stream = client.Upsert((err, response) => (err ? reject(err) : resolve(response)));
    messages.forEach((m) => stream.write(m));
    stream.end();
  });
}

// filter and metadata are JSON object *texts*: JSON.stringify them; a bare object would become "[object Object]".
async function search(client, spec, filter) {
  const response = await unary(client, 'Search', {
    collection: spec.collection, queries: matrix(spec.queries), k: spec.k, include_metadata: true,
    filter: filter === undefined ? '' : JSON.stringify(filter),
  });
  // Not padded: a query gets at most k hits, fewer when fewer items exist or match.
  return response.results.map((hits) => ({
    ids: hits.ids, distances: floats(hits.distances), metadata: hits.metadata.map((m) => JSON.parse(m)),
  }));
}

async function main() {
  const [, , , target, specPath] = process.argv;
  const spec = JSON.parse(fs.readFileSync(specPath, 'utf8'));
  const client = new simdex.Simdex(target, grpc.credentials.createInsecure());
  await unary(client, 'CreateCollection', {name: spec.collection, dim: spec.vectors[0].length, metric: spec.metric});
  const stored = await upsert(client, [{
    collection: spec.collection, ids: spec.ids, vectors: matrix(spec.vectors),
    metadata: spec.metadata.map((m) => JSON.stringify(m)),
  }]);
  const result = {
    upserted: stored.upserted, search: await search(client, spec), filtered: await search(client, spec, spec.filter),
  };
  try {  // the mistake the server names: an object where the .proto says a JSON text
    await unary(client, 'Search', {
      collection: spec.collection, queries: matrix(spec.queries), k: spec.k, filter: spec.filter,
    });
  } catch (err) {
    result.object_filter_error = {code: grpc.status[err.code], details: err.details};
  }
  client.close();
  process.stdout.write(JSON.stringify(result) + '\n');
}

main().catch((err) => {
  process.stderr.write(`${err.stack || err}\n`);
  process.exit(1);
});
