// The live page: draws JPEG frames from /ws on a canvas and shows the counters.
// Frames are binary messages, one JPEG each, whose first segment is a JPEG
// comment {"seq", "t"} stamped by the server at capture time (ms since epoch).
"use strict";
(() => {
  const $ = (id) => document.getElementById(id);
  const canvas = $("view");
  const ctx = canvas.getContext("2d");
  const token = new URLSearchParams(location.search).get("token");
  const decoder = new TextDecoder();

  let ws = null;
  let retryMs = 500;
  let clockOffset = 0;     // server clock - client clock, ms (best ping sample)
  let bestRtt = Infinity;
  let pending = null;      // newest frame not yet drawn
  let drawing = false;
  let frames = 0;          // frames drawn since the page opened
  let skipped = 0;         // frames replaced here before they could be drawn
  let serverDropped = 0;   // frames the server skipped for this connection
  let droppedBefore = 0;   // drops of earlier connections
  let lastSize = 0;
  let me = null;           // this connection's viewer number (from hello)
  const drawn = [];        // [performance.now(), latency ms or NaN] of recent frames

  function wsUrl() {
    const url = new URL("/ws", location.href);
    url.protocol = location.protocol === "https:" ? "wss:" : "ws:";
    if (token) url.searchParams.set("token", token);
    return url.href;
  }

  function setState(text, kind) {
    const el = $("state");
    el.textContent = text;
    el.className = "state " + kind;
  }

  function say(text) { $("message").textContent = text; }

  function readStamp(bytes) {
    if (bytes[0] !== 0xff || bytes[1] !== 0xd8 || bytes[2] !== 0xff || bytes[3] !== 0xfe) return null;
    const length = (bytes[4] << 8) | bytes[5];
    try { return JSON.parse(decoder.decode(bytes.subarray(6, 4 + length))); } catch (e) { return null; }
  }

  async function drawPending() {
    if (drawing) return;
    drawing = true;
    while (pending) {
      const buffer = pending;
      pending = null;
      const stamp = readStamp(new Uint8Array(buffer, 0, Math.min(buffer.byteLength, 256)));
      let bitmap;
      try {
        bitmap = await createImageBitmap(new Blob([buffer], { type: "image/jpeg" }));
      } catch (e) {
        say("a frame could not be decoded");
        continue;
      }
      if (canvas.width !== bitmap.width || canvas.height !== bitmap.height) {
        canvas.width = bitmap.width;
        canvas.height = bitmap.height;
      }
      ctx.drawImage(bitmap, 0, 0);
      bitmap.close();
      frames += 1;
      lastSize = buffer.byteLength;
      drawn.push([performance.now(), stamp ? Date.now() + clockOffset - stamp.t : NaN]);
    }
    drawing = false;
  }

  function onFrame(buffer) {
    if (pending) skipped += 1;
    pending = buffer;
    drawPending();
  }

  function fillSelect(el, names, current) {
    el.replaceChildren(...names.map((name) => new Option(name, name, false, name === current)));
    el.value = current;
    el.disabled = false;
  }

  function onControl(msg) {
    switch (msg.type) {
      case "hello":
        me = msg.you;
      // falls through
      case "state":
        fillSelect($("source"), msg.sources, msg.source);
        fillSelect($("model"), msg.models, msg.model);
        // A model that takes a sentence (fashiongan) shows the box; another viewer's
        // sentence replaces ours unless we are typing.
        $("textbox").hidden = !(msg.text_models || []).includes(msg.model);
        if (msg.text != null && document.activeElement !== $("text")) $("text").value = msg.text;
        $("viewers").textContent = msg.viewers;
        // Who made the last switch: any viewer can, for everyone.
        $("picked").textContent = msg.picked_by == null ? "–"
          : msg.picked_by === me ? "you" : `viewer ${msg.picked_by}`;
        if (msg.status === "streaming") say("");
        break;
      case "stats":
        serverDropped = msg.dropped;
        $("viewers").textContent = msg.viewers;
        break;
      case "pong": {
        const now = Date.now();
        const rtt = now - msg.t;
        if (rtt <= bestRtt) {
          // NTP-style estimate, good to rtt / 2: a smaller offset is no evidence of skew.
          bestRtt = rtt;
          const offset = msg.server - (msg.t + now) / 2;
          clockOffset = Math.abs(offset) > rtt / 2 ? offset : 0;
        }
        break;
      }
      case "end":
      case "error":
        say(msg.message);
        break;
    }
  }

  function send(message) {
    if (ws && ws.readyState === WebSocket.OPEN) ws.send(JSON.stringify(message));
  }

  function ping() { send({ type: "ping", t: Date.now() }); }

  function connect() {
    setState("connecting", "connecting");
    ws = new WebSocket(wsUrl());
    ws.binaryType = "arraybuffer";
    ws.onopen = () => {
      retryMs = 500;
      bestRtt = Infinity;
      setState("open", "open");
      ping();
    };
    ws.onmessage = (event) => {
      if (typeof event.data === "string") {
        try { onControl(JSON.parse(event.data)); } catch (e) { say("bad control message"); }
      } else {
        onFrame(event.data);
      }
    };
    ws.onclose = (event) => {
      droppedBefore += serverDropped;
      serverDropped = 0;
      $("source").disabled = $("model").disabled = true;
      const why = event.code === 1006 ? "" : ` (${event.code}${event.reason ? " " + event.reason : ""})`;
      setState(`closed${why}, retrying in ${(retryMs / 1000).toFixed(1)} s`, "closed");
      setTimeout(connect, retryMs);
      retryMs = Math.min(retryMs * 2, 5000);
    };
  }

  function median(values) {
    if (!values.length) return NaN;
    const sorted = [...values].sort((a, b) => a - b);
    return sorted[Math.floor(sorted.length / 2)];
  }

  function updateCounters() {
    const now = performance.now();
    while (drawn.length && drawn[0][0] < now - 1000) drawn.shift();
    $("fps").textContent = drawn.length ? drawn.length.toFixed(0) : "0";
    const latency = median(drawn.map((d) => d[1]).filter((v) => !Number.isNaN(v)));
    $("latency").textContent = Number.isNaN(latency) ? "–" : `${latency.toFixed(0)} ms`;
    $("frames").textContent = frames;
    $("dropped").textContent = droppedBefore + serverDropped + skipped;
    $("size").textContent = lastSize ? `${canvas.width}×${canvas.height}, ${(lastSize / 1024).toFixed(0)} KiB` : "–";
  }

  $("source").onchange = (e) => send({ type: "select", source: e.target.value });
  $("model").onchange = (e) => send({ type: "select", model: e.target.value });
  $("textbox").onsubmit = (e) => {
    e.preventDefault();
    send({ type: "text", text: $("text").value });
    $("text").blur();
  };
  setInterval(updateCounters, 250);
  setInterval(ping, 5000);
  connect();
})();
