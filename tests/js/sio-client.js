// A socket.io-client driven by the rowcast test suite (tests/suites/socketio.rs).
//
// argv[2]: JSON {"url": "...", "opts": {...}} passed to io(url, opts).
// stdout: one JSON object per line, for everything the client sees:
//   {"t":"connect","id":..,"recovered":..,"transport":..}
//   {"t":"connect_error","message":..}   {"t":"disconnect","reason":..}
//   {"t":"event","name":..,"args":[..]}  {"t":"ack","n":..,"args":[..]}
//   {"t":"upgrade","transport":..}
// stdin: one JSON command per line:
//   {"emit":"subscribe","args":[["a","b"]],"n":1}  (n: answer with an ack line)
//   {"exit":true}
'use strict';
const { io } = require('socket.io-client');
const readline = require('readline');

const cfg = JSON.parse(process.argv[2]);
const out = (o) => process.stdout.write(JSON.stringify(o) + '\n');
const socket = io(cfg.url, cfg.opts || {});

socket.on('connect', () =>
  out({ t: 'connect', id: socket.id, recovered: socket.recovered, transport: socket.io.engine.transport.name }));
socket.on('connect_error', (e) => out({ t: 'connect_error', message: e.message }));
socket.on('disconnect', (reason) => out({ t: 'disconnect', reason }));
socket.onAny((name, ...args) => out({ t: 'event', name, args }));
socket.io.on('open', () => socket.io.engine.on('upgrade', (tr) => out({ t: 'upgrade', transport: tr.name })));

readline.createInterface({ input: process.stdin }).on('line', (line) => {
  const cmd = JSON.parse(line);
  if (cmd.exit) {
    socket.close();
    process.exit(0);
  }
  if (cmd.emit) {
    if (cmd.n !== undefined) {
      socket.emit(cmd.emit, ...(cmd.args || []), (...args) => out({ t: 'ack', n: cmd.n, args }));
    } else {
      socket.emit(cmd.emit, ...(cmd.args || []));
    }
  }
});
process.stdin.on('end', () => process.exit(0));
