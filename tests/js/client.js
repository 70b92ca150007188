// A pusher-js client for tests/test_pusherjs.py. Usage: node client.js '<options JSON>'
// options: {key, secret, wsHost, wsPort, userId, channels: [...], events: [...], signin: bool}
// (events: names bound one by one, which is how pusher-js hands out a client event's user_id)
// Prints one JSON object per line for everything it sees. Reads JSON commands on stdin:
// {"cmd":"trigger","channel":C,"event":E,"data":D} and {"cmd":"disconnect"}.
'use strict';
const crypto = require('crypto');
const readline = require('readline');
const Pusher = require('pusher-js');

const opts = JSON.parse(process.argv[2]);
const out = (o) => process.stdout.write(JSON.stringify(o) + '\n');
// The secret is only here because this is a test; a real page asks its backend to sign.
const sign = (s) => crypto.createHmac('sha256', opts.secret).update(s).digest('hex');

const pusher = new Pusher(opts.key, {
  cluster: 'local',
  wsHost: opts.wsHost,
  wsPort: opts.wsPort,
  forceTLS: false,
  enabledTransports: ['ws'],
  disableStats: true,
  channelAuthorization: {
    customHandler: ({ socketId, channelName }, callback) => {
      let message = socketId + ':' + channelName;
      let channelData;
      if (channelName.startsWith('presence-')) {
        channelData = JSON.stringify({ user_id: opts.userId, user_info: { name: opts.userId } });
        message += ':' + channelData;
      }
      callback(null, { auth: opts.key + ':' + sign(message), channel_data: channelData });
    },
  },
  userAuthentication: {
    customHandler: ({ socketId }, callback) => {
      const user = opts.watchlist ? { id: opts.userId, watchlist: opts.watchlist } : { id: opts.userId };
      const userData = JSON.stringify(user);
      callback(null, { auth: opts.key + ':' + sign(socketId + '::user::' + userData), user_data: userData });
    },
  },
});

pusher.connection.bind('state_change', (s) => out({ type: 'state', state: s.current }));
pusher.connection.bind('connected', () => out({ type: 'connected', socketId: pusher.connection.socket_id }));
pusher.connection.bind('error', (e) => out({ type: 'error', error: JSON.stringify(e) }));

for (const name of opts.channels || []) {
  const channel = pusher.subscribe(name);
  channel.bind('pusher:subscription_succeeded', (data) => {
    const o = { type: 'subscribed', channel: name };
    if (name.startsWith('presence-')) {
      o.members = [];
      channel.members.each((m) => o.members.push(m.id));
      o.me = channel.members.me && channel.members.me.id;
    }
    out(o);
  });
  channel.bind('pusher:subscription_error', (e) => out({ type: 'subscription_error', channel: name, status: e.status }));
  channel.bind('pusher:member_added', (m) => out({ type: 'member_added', channel: name, id: m.id, info: m.info }));
  channel.bind('pusher:member_removed', (m) => out({ type: 'member_removed', channel: name, id: m.id }));
  channel.bind_global((event, data) => {
    if (event.startsWith('pusher:')) return;
    out({ type: 'event', channel: name, event, data });
  });
  for (const event of opts.events || []) {
    channel.bind(event, (data, metadata) =>
      out({ type: 'bound', channel: name, event, data, user_id: metadata && metadata.user_id }));
  }
}

if (opts.signin) {
  pusher.signin();
  pusher.user.bind_global((event, data) => out({ type: 'user_event', event, data }));
  for (const name of ['online', 'offline']) {
    pusher.user.watchlist.bind(name, (e) => out({ type: 'watchlist', name, user_ids: e.user_ids }));
  }
  pusher.user.signinDonePromise.then(() => out({ type: 'signed_in', id: pusher.user.user_data && pusher.user.user_data.id }));
}

const quit = () => {
  pusher.disconnect();
  out({ type: 'disconnected' });
  setTimeout(() => process.exit(0), 50);
};

readline.createInterface({ input: process.stdin }).on('line', (line) => {
  const cmd = JSON.parse(line);
  if (cmd.cmd === 'trigger') {
    const ok = pusher.channel(cmd.channel).trigger(cmd.event, cmd.data);
    out({ type: 'triggered', ok });
  } else if (cmd.cmd === 'disconnect') {
    quit();
  }
}).on('close', quit);
