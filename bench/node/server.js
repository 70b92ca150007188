// The Node `ws` peer of the benchmark: a broadcast server. WebSocket clients connect to any path
// and get one "ok" text frame once they are in the broadcast set; POST /publish sends its body
// as a text frame to every client (the loop the ws README shows for broadcasting).
'use strict';
const http = require('http');
const { WebSocketServer, WebSocket } = require('ws');

const port = Number(process.argv[2]);
const wss = new WebSocketServer({ noServer: true, perMessageDeflate: false });
const server = http.createServer((req, res) => {
  if (req.method !== 'POST' || req.url !== '/publish') {
    res.writeHead(404, { 'content-length': '0' });
    res.end();
    return;
  }
  const chunks = [];
  req.on('data', (c) => chunks.push(c));
  req.on('end', () => {
    const body = Buffer.concat(chunks);
    let n = 0;
    for (const client of wss.clients) {
      if (client.readyState === WebSocket.OPEN) {
        client.send(body, { binary: false });
        n++;
      }
    }
    const reply = String(n);
    res.writeHead(200, { 'content-type': 'text/plain', 'content-length': reply.length });
    res.end(reply);
  });
});
server.on('upgrade', (req, socket, head) => {
  wss.handleUpgrade(req, socket, head, (ws) => wss.emit('connection', ws, req));
});
wss.on('connection', (ws) => {
  ws.on('error', () => {});
  ws.send('ok');
});
server.listen(port, '127.0.0.1', () => process.stdout.write('listening\n'));
process.on('SIGTERM', () => process.exit(0));
