// The op graph of `graphprune inspect --html`, drawn from the JSON in #gp-data (written by html.py).
// One view at a time: the model, a scope box opened, or one group with its neighbours. Layouts of
// the model's views come precomputed; a group's view is laid out here (layers by longest path).
// No library: SVG strings, pan and zoom by one transform, a canvas minimap.
(function () {
  "use strict";
  var D = JSON.parse(document.getElementById("gp-data").textContent);
  var OP = 0, BLOCK = 1, PIN = 2, POUT = 3, INPUT = 4, OUTPUT = 5;
  var BH = D.geo.boxH, LH = D.geo.layerH, M = D.geo.margin, READ = 0.85;  // 11 px text stays >= 9 px
  var nodes = D.nodes, tensors = D.tensors;
  var svg = document.getElementById("graph"), vp = document.getElementById("vp");
  var box = document.getElementById("scroll"), mini = document.getElementById("mini");
  var rows = Array.prototype.slice.call(document.querySelectorAll("tr[data-gid]"));
  var blocked = {};
  D.blocked.forEach(function (g) { blocked[g] = 1; });

  function esc(s) {
    return String(s).replace(/[&<>"]/g, function (c) {
      return {"&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;"}[c];
    });
  }
  function short(s, n) { return s.length <= n ? s : s.slice(0, n - 1) + "\u2026"; }
  function tname(t) {
    var s = tensors[t][0];
    return s.charAt(0) === "\x01" ? nodes[tensors[t][4]][0] + s.slice(1) : s;
  }
  function groupsOfStripes(st) { var o = []; for (var j = 0; j < st.length; j += 2) o.push(st[j]); return o; }
  function groupLines(st) {
    if (!st.length) return "channels: no group";
    var parts = [];
    for (var j = 0; j < st.length && j < 16; j += 2)
      parts.push("#" + st[j] + " (" + (blocked[st[j]] ? "blocked" : "prunable") + ", " + st[j + 1] + " ch)");
    return "channels: group " + parts.join(", ") + (st.length > 16 ? " +" + (st.length - 16) / 2 + " more" : "");
  }

  // ---- the model's views, unpacked on first use
  var leaf = new Int32Array(nodes.length), leafItem = new Int32Array(nodes.length);
  var outsOf = nodes.map(function () { return []; }), insOf = nodes.map(function () { return []; });
  tensors.forEach(function (t, i) {
    if (t[4] >= 0) outsOf[t[4]].push(i);
    t[5].forEach(function (r) { if (r >= 0) insOf[r].push(i); });
  });
  var views = D.views.map(function (v, id) {
    var items = [];
    for (var j = 0; j < v.i.length; j += 4)
      items.push({kind: v.i[j], ref: v.i[j + 1], layer: v.i[j + 2], w: v.i[j + 3], x: v.x[j / 4]});
    items.forEach(function (it, j) { if (it.kind === OP) { leaf[it.ref] = id; leafItem[it.ref] = j; } });
    return {id: id, l: v.l, p: v.p, n: v.n, o: v.o, w: v.w, h: v.h, items: items, routes: v.r};
  });
  var vgroups = [];
  function viewGroups(id) {  // every group a node inside the box touches
    if (vgroups[id]) return vgroups[id];
    var s = {};
    views[id].items.forEach(function (it) {
      if (it.kind === OP) nodes[it.ref][4].forEach(function (g) { s[g] = 1; });
      else if (it.kind === BLOCK) Object.keys(viewGroups(it.ref)).forEach(function (g) { s[g] = 1; });
    });
    return (vgroups[id] = s);
  }
  function groupsOf(view, it) {
    if (it.kind === OP) return nodes[it.ref][4];
    if (it.kind === BLOCK) return Object.keys(viewGroups(it.ref)).map(Number);
    return tensors[it.ref][3];
  }

  // ---- boxes expanded in place: the parent's layout with the box's area grown to its own layout
  var open = {};  // view id -> expanded in place wherever it is drawn
  function copyView(v) {
    return {id: v.id, l: v.l, p: v.p, n: v.n, o: v.o, w: v.w, h: v.h, frames: [],
            items: v.items.map(function (it) { return {kind: it.kind, ref: it.ref, layer: it.layer, w: it.w, x: it.x}; }),
            routes: v.routes.map(function (r) { return [r[0], r[1], r[2].slice(), r[3].slice()]; })};
  }
  function compose(id) {
    var lay = copyView(views[id]);
    for (;;) {
      var j = lay.items.findIndex(function (it) { return it.kind === BLOCK && open[it.ref]; });
      if (j < 0) return lay;
      splice(lay, j, compose(lay.items[j].ref));
    }
  }
  function splice(lay, j, sub) {  // item j of lay (a box) replaced by the layout sub
    var bx = lay.items[j], b = bx.layer, left = bx.x - bx.w / 2;
    var cl = 1 + sub.items.reduce(function (m, it) { return Math.max(m, it.layer); }, 0);
    var sw = sub.w - 2 * M, dw = Math.max(0, sw - bx.w), dl = cl - 1;
    function sx(x) { return x > bx.x ? x + dw : x; }  // monotone: nothing is drawn over
    function sl(l) { return l > b ? l + dl : l; }
    var items = [], at = [], pinAt = {}, poutAt = {};
    lay.items.forEach(function (it, i) {
      if (i === j) { at.push(-1); return; }
      at.push(items.length);
      items.push({kind: it.kind, ref: it.ref, layer: sl(it.layer), w: it.w, x: sx(it.x)});
    });
    var base = items.length;
    function ix(x) { return x - M + left + (dw ? 0 : (bx.w - sw) / 2); }
    sub.items.forEach(function (it, i) {
      if (it.kind === PIN) pinAt[it.ref] = base + i;
      if (it.kind === POUT) poutAt[it.ref] = base + i;
      items.push({kind: it.kind, ref: it.ref, layer: it.layer + b, w: it.w, x: ix(it.x)});
    });
    var routes = [];
    lay.routes.forEach(function (r) {
      var t = r[0], src = r[1] === j ? poutAt[t] : at[r[1]];
      if (src === undefined) return;
      var dsts = r[2].map(function (d) { return d === j ? pinAt[t] : at[d]; }).filter(function (d) { return d !== undefined; });
      if (!dsts.length) return;
      var os = lay.items[r[1]].layer, ns = items[src].layer, far = 0;
      dsts.forEach(function (d) { far = Math.max(far, items[d].layer); });
      var ways = [];
      var into = r[2].indexOf(j) >= 0 ? items[pinAt[t]] : null, from = r[1] === j ? items[src] : null;
      for (var L = ns + 1; L < far; L++) {  // the band of the box repeats its layer's waypoint
        var wi = (L < b ? L : L > b + dl ? L - dl : b) - os - 1, w = wi >= 0 && wi < r[3].length ? sx(r[3][wi]) : null;
        if (w === null) w = L >= b && L <= b + dl && into ? into.x : from ? from.x : items[src].x;
        ways.push(w);
      }
      routes.push([t, src, dsts, ways]);
    });
    sub.routes.forEach(function (r) {
      routes.push([r[0], base + r[1], r[2].map(function (d) { return base + d; }), r[3].map(ix)]);
    });
    var frames = lay.frames.map(function (f) {
      return {ref: f.ref, l0: sl(f.l0), l1: f.l1 >= b ? f.l1 + dl : f.l1, x0: sx(f.x0), x1: sx(f.x1)};
    });
    frames.push({ref: bx.ref, l0: b, l1: b + dl, x0: left, x1: left + Math.max(sw, bx.w)});
    sub.frames.forEach(function (f) { frames.push({ref: f.ref, l0: f.l0 + b, l1: f.l1 + b, x0: ix(f.x0), x1: ix(f.x1)}); });
    lay.items = items; lay.routes = routes; lay.frames = frames;
    lay.w += dw; lay.h += dl * LH;
  }
  function frameSvg(f) {
    var sub = views[f.ref], o = sub.o, pad = 8, y0 = top(f.l0) - pad - 4, y1 = top(f.l1) + BH + pad;
    var title = sub.l + "\n" + sub.n + " ops, expanded here; click the frame to fold it, \u2197 to open it as its own view";
    return '<g class="xf" data-f="' + f.ref + '" transform="translate(' + (f.x0 - pad) + " " + y0 + ')"><title>' + esc(title) +
      '</title><rect class="fr' + (o.length ? " s" + o[0] : " s-") + '" width="' + (f.x1 - f.x0 + 2 * pad) + '" height="' + (y1 - y0) +
      '" rx="8"/><text x="6" y="11">\u2212 ' + esc(short(sub.l, 48)) + '<tspan class="xo" data-o="' + f.ref + '"> \u2197 open</tspan></text></g>';
  }
  function expand(ref, on) {
    if (on) open[ref] = 1; else delete open[ref];
    var keep = [s, tx, ty];
    go(views[cur.id], true);
    s = keep[0]; tx = keep[1]; ty = keep[2]; apply();
  }

  // ---- drawing one view
  var cur = null, els = [], byGroup = {}, pinned = null, hit = null;
  function top(layer) { return M + layer * LH; }
  function curve(x0, y0, x1, y1) { var m = (y0 + y1) / 2; return "C" + x0 + " " + m + " " + x1 + " " + m + " " + x1 + " " + y1; }

  function edgeSvg(t, d, i) {
    var st = tensors[t][2], gs = groupsOfStripes(st), k = gs.length;
    var title = "<title>" + esc(tname(t) + " " + tensors[t][1] + "\n" + groupLines(st)) + "</title>";
    var at = ' data-e="' + i + '"';
    if (k === 0) return '<path class="e s-"' + at + ' d="' + d + '">' + title + "</path>";
    if (k === 1) return '<path class="e s' + gs[0] + '"' + at + ' d="' + d + '">' + title + "</path>";
    if (k > 4) return '<path class="e mix"' + at + ' d="' + d + '">' + title + "</path>";
    var inner = gs.map(function (g, j) { return '<path class="s' + g + " d" + k + "-" + j + '" d="' + d + '"/>'; });
    return '<g class="e"' + at + ">" + title + inner.join("") + "</g>";
  }

  function itemSvg(view, it, i) {
    var w = it.w, left = it.x - w / 2, head, text, title;
    var cls = ["op", "blk", "port", "port", "input", "output"][it.kind];
    if (it.kind === OP) {
      var nd = nodes[it.ref], st = nd[3], gs = groupsOfStripes(st);
      var lines = [nd[0] + " (" + nd[1] + ")"];
      outsOf[it.ref].forEach(function (t) { lines.push("out " + tname(t) + " " + tensors[t][1]); });
      lines.push(groupLines(st));
      title = lines.join("\n");
      var chans = nd[2] ? '<tspan class="c"> ' + esc(nd[2]) + "</tspan>" : "";
      var tag = gs.length === 1 ? '<tspan class="t t' + gs[0] + '"> #' + gs[0] + "</tspan>" : "";
      text = '<text x="' + w / 2 + '" y="15">' + esc(short(nd[1], 22)) + chans + tag + "</text>";
      var hat = gs.some(function (g) { return blocked[g]; }) ? '<rect class="hat" width="' + w + '" height="' + BH + '" rx="5"/>' : "";
      var body;
      if (gs.length <= 1) {
        var f = gs.length ? "f" + gs[0] + " s" + gs[0] : "f- s-";
        body = '<rect class="box ' + f + '" width="' + w + '" height="' + BH + '" rx="5"/>';
      } else {
        var total = 0, x = 0, parts = [];
        for (var j = 1; j < st.length; j += 2) total += st[j];
        for (j = 0; j < st.length; j += 2) {
          var sw = w * st[j + 1] / (total || 1);
          parts.push('<rect class="f' + st[j] + '" x="' + x.toFixed(1) + '" width="' + (sw + 0.6).toFixed(1) + '" height="' + BH + '"/>');
          x += sw;
        }
        body = '<g clip-path="url(#rc)">' + parts.join("") + '</g><rect class="box multi" width="' + w + '" height="' + BH + '" rx="5"/>';
      }
      head = body + hat;
    } else if (it.kind === BLOCK) {
      var sub = views[it.ref], o = sub.o;
      var stroke = o.length ? " s" + o[0] : " s-";
      title = sub.l + "\n" + sub.n + " ops; click to expand it here, shift-click to open it as its own view\n" +
        (o.length ? "channels leaving it: group " + o.map(function (g) { return "#" + g; }).join(", ") : "no group leaves it");
      var bar = "", bw = (w - 10) / Math.max(o.length, 1);
      o.forEach(function (g, j) {
        var seg = '" x="' + (5 + j * bw).toFixed(1) + '" y="' + (BH - 6) + '" width="' + bw.toFixed(1) + '" height="4"/>';
        bar += '<rect class="f' + g + seg + (blocked[g] ? '<rect fill="url(#hatch)' + seg : "");  // blocked: hatched
      });
      head = '<rect class="back" x="3" y="3" width="' + w + '" height="' + BH + '" rx="4"/>' +
        '<rect class="box' + stroke + '" width="' + w + '" height="' + BH + '" rx="4"/>' + bar;
      text = '<text x="' + w / 2 + '" y="14">' + esc(short(sub.l, 34)) + '<tspan class="c"> ' + sub.n + " ops</tspan></text>";
    } else {
      var t = it.ref, nm = tname(t), io = it.kind >= INPUT;
      var st2 = tensors[t][2], g0 = st2.length ? " s" + st2[0] : "";
      if (io) title = "graph " + (it.kind === INPUT ? "input " : "output ") + nm + " " + tensors[t][1];
      else if (it.kind === PIN) title = nm + " " + tensors[t][1] + "\nenters this box (from " + (tensors[t][4] >= 0 ? nodes[tensors[t][4]][0] : "the graph input") + "); click to go there";
      else title = nm + " " + tensors[t][1] + "\nleaves this box; click to go to a reader";
      title += "\n" + groupLines(st2);
      head = '<rect class="' + (io ? "io" : "pr") + g0 + '" width="' + w + '" height="' + BH + '" rx="11"/>';
      text = '<text x="' + w / 2 + '" y="15">' + esc((io ? "" : "\u2193 ") + short(nm, 20)) + "</text>";
    }
    return '<g class="n ' + cls + '" data-i="' + i + '" transform="translate(' + left + " " + top(it.layer) + ')"><title>' +
      esc(title) + "</title>" + head + text + "</g>";
  }

  function draw(view) {
    var items = view.items, edges = [], incoming = {};
    view.routes.forEach(function (r, ri) {
      var s = items[r[1]];
      r[2].forEach(function (d) {
        var dl = items[d].layer, wi = dl - 1 - (s.layer + 1);
        var bx = wi >= 0 && wi < r[3].length ? r[3][wi] : s.x;
        (incoming[d] = incoming[d] || []).push([bx, ri]);
      });
    });
    var ports = {};
    Object.keys(incoming).forEach(function (d) {
      var ins = incoming[d].sort(function (a, b) { return a[0] - b[0]; }), it = items[d];
      var step = Math.min(10, (it.w - 12) / Math.max(ins.length, 1));
      ins.forEach(function (p, k) { ports[p[1] + ":" + d] = Math.round(10 * (it.x + (k - (ins.length - 1) / 2) * step)) / 10; });
    });
    view.routes.forEach(function (r, ri) {
      var s = items[r[1]], xs = s.x, ys = top(s.layer) + BH, d = "M" + xs + " " + ys, px = xs, py = ys;
      r[3].forEach(function (wx, j) {
        var t = top(s.layer + 1 + j);
        d += curve(px, py, wx, t) + "L" + wx + " " + (t + BH);
        px = wx; py = t + BH;
      });
      r[2].forEach(function (di) {
        var it = items[di], wi = it.layer - 1 - (s.layer + 1), bx = xs, by = ys;
        if (wi >= 0 && wi < r[3].length) { bx = r[3][wi]; by = top(it.layer - 1) + BH; }
        d += "M" + bx + " " + by + curve(bx, by, ports[ri + ":" + di], top(it.layer));
      });
      edges.push(edgeSvg(r[0], d, ri));
    });
    var parts = items.map(function (it, i) { return itemSvg(view, it, i); });
    var frames = (view.frames || []).map(frameSvg).join("");
    vp.innerHTML = '<g class="frames">' + frames + '</g><g class="edges">' + edges.join("") + '</g><g class="nodes">' + parts.join("") + "</g>";
    byGroup = {};
    els = Array.prototype.slice.call(vp.querySelectorAll(".n"));
    els.forEach(function (el) {
      groupsOf(view, items[+el.getAttribute("data-i")]).forEach(function (g) { (byGroup[g] = byGroup[g] || []).push(el); });
    });
    vp.querySelectorAll(".xf").forEach(function (el) {  // a frame lights with any group inside it
      Object.keys(viewGroups(+el.getAttribute("data-f"))).forEach(function (g) { (byGroup[g] = byGroup[g] || []).push(el); });
    });
    vp.querySelectorAll(".e").forEach(function (el) {
      tensors[view.routes[+el.getAttribute("data-e")][0]][3].forEach(function (g) { (byGroup[g] = byGroup[g] || []).push(el); });
    });
  }

  // ---- pan and zoom
  var s = 1, tx = 0, ty = 0;
  function apply() {
    vp.setAttribute("transform", "translate(" + tx.toFixed(1) + " " + ty.toFixed(1) + ") scale(" + s.toFixed(4) + ")");
    drawMini();
  }
  function fit() {  // the whole view if its text stays readable, else its top at a readable scale
    var cw = box.clientWidth, ch = box.clientHeight;
    s = Math.min(cw / cur.w, ch / cur.h, 1.5);
    s = Math.max(s, READ);
    tx = (cw - cur.w * s) / 2;
    if (tx < 0) tx = Math.max(cw - cur.w * s, Math.min(0, cw / 2 - firstX() * s));
    ty = cur.h * s <= ch ? (ch - cur.h * s) / 2 : 0;
    apply();
  }
  function firstX() { var it = cur.items.reduce(function (a, b) { return b.layer < a.layer ? b : a; }, cur.items[0]); return it ? it.x : 0; }
  function zoomAt(f, cx, cy) {
    var ns = Math.max(0.05, Math.min(4, s * f));
    tx = cx - (cx - tx) * ns / s; ty = cy - (cy - ty) * ns / s; s = ns;
    apply();
  }
  function center(it, scale) {
    if (scale) s = scale;
    tx = box.clientWidth / 2 - it.x * s;
    ty = box.clientHeight / 2 - (top(it.layer) + BH / 2) * s;
    apply();
  }
  box.addEventListener("wheel", function (ev) {
    ev.preventDefault();
    var r = box.getBoundingClientRect();
    zoomAt(Math.exp(-ev.deltaY * 0.0015), ev.clientX - r.left, ev.clientY - r.top);
  }, {passive: false});
  var drag = null, moved = false;
  box.addEventListener("mousedown", function (ev) {
    if (ev.button !== 0 || ev.target === mini) return;
    box.focus({preventScroll: true});
    drag = [ev.clientX, ev.clientY, tx, ty]; moved = false;
  });
  window.addEventListener("mousemove", function (ev) {
    if (!drag) return;
    var dx = ev.clientX - drag[0], dy = ev.clientY - drag[1];
    if (!moved && Math.abs(dx) + Math.abs(dy) < 4) return;
    moved = true; box.classList.add("drag");
    tx = drag[2] + dx; ty = drag[3] + dy; apply();
  });
  window.addEventListener("mouseup", function () { drag = null; box.classList.remove("drag"); });
  document.addEventListener("keydown", function (ev) {
    var tag = (ev.target.tagName || "").toLowerCase();
    if (tag === "input" || tag === "select" || tag === "textarea" || ev.ctrlKey || ev.metaKey || ev.altKey) return;
    if (!box.matches(":hover") && document.activeElement !== box) return;  // the page keeps its own keys
    var k = ev.key, cw = box.clientWidth, ch = box.clientHeight, used = true;
    if (k === "ArrowLeft") tx += 60; else if (k === "ArrowRight") tx -= 60;
    else if (k === "ArrowUp") ty += 60; else if (k === "ArrowDown") ty -= 60;
    else if (k === "+" || k === "=") return zoomAt(1.25, cw / 2, ch / 2);
    else if (k === "-") return zoomAt(0.8, cw / 2, ch / 2);
    else if (k === "0") return fit();
    else if (k === "1") return zoomAt(1 / s, cw / 2, ch / 2);
    else if (k === "Escape") { if (pinned !== null) { pin(null); } else up(); return; }
    else used = false;
    if (used) { ev.preventDefault(); apply(); }
  });
  document.querySelectorAll("[data-zoom]").forEach(function (b) {
    b.addEventListener("click", function () {
      var z = b.getAttribute("data-zoom"), cw = box.clientWidth, ch = box.clientHeight;
      if (z === "fit") fit(); else if (z === "1") zoomAt(1 / s, cw / 2, ch / 2); else zoomAt(+z, cw / 2, ch / 2);
    });
  });

  // ---- minimap
  var mscale = 1, mx0 = 0, my0 = 0;
  function drawMini() {
    var c = mini.getContext("2d"), W = mini.width, H = mini.height;
    c.clearRect(0, 0, W, H);
    mscale = Math.min((W - 8) / cur.w, (H - 8) / cur.h);
    mx0 = (W - cur.w * mscale) / 2; my0 = (H - cur.h * mscale) / 2;
    c.fillStyle = "#8c959f";
    cur.items.forEach(function (it) {
      c.fillRect(mx0 + (it.x - it.w / 2) * mscale, my0 + top(it.layer) * mscale, Math.max(1, it.w * mscale), Math.max(1, BH * mscale));
    });
    c.strokeStyle = "#0969da"; c.lineWidth = 1.5;
    c.strokeRect(mx0 + (-tx / s) * mscale, my0 + (-ty / s) * mscale, box.clientWidth / s * mscale, box.clientHeight / s * mscale);
  }
  mini.addEventListener("click", function (ev) {
    var r = mini.getBoundingClientRect();
    var x = (ev.clientX - r.left - mx0) / mscale, y = (ev.clientY - r.top - my0) / mscale;
    tx = box.clientWidth / 2 - x * s; ty = box.clientHeight / 2 - y * s; apply();
    ev.stopPropagation();
  });

  // ---- navigation
  var crumbs = document.getElementById("crumbs"), groupView = null;
  function chainOf(id) { var c = []; while (id >= 0) { c.unshift(id); id = views[id].p; } return c; }
  function go(view, noFit) {
    if (view.id >= 0) view = compose(view.id);
    cur = view;
    draw(view);
    var c = view.id >= 0 ? chainOf(view.id) : chainOf(view.back);
    var html = c.map(function (id, j) {
      var l = esc(short(views[id].l, 40));
      return (j ? '<span class="sep">\u203a</span>' : "") + (id === view.id ? "<b>" + l + "</b>" : '<a data-v="' + id + '">' + l + "</a>");
    }).join("");
    if (view.id < 0) html += '<span class="sep">\u203a</span><b>' + esc(view.l) + "</b>";
    crumbs.innerHTML = html;
    if (!noFit) fit();
    show(pinned);
  }
  crumbs.addEventListener("click", function (ev) {
    var a = ev.target.closest("a[data-v]");
    if (a) go(views[+a.getAttribute("data-v")]);
  });
  function up() {
    if (cur.id < 0) go(views[cur.back]);
    else if (cur.p >= 0) { var from = cur.id; go(views[cur.p]); reveal(from); }
  }
  document.getElementById("up").addEventListener("click", up);
  function reveal(childView) {  // after going up: centre the box just left
    var j = cur.items.findIndex(function (it) { return it.kind === BLOCK && it.ref === childView; });
    if (j < 0) j = cur.items.findIndex(function (it) { return it.kind !== BLOCK && inBox(it, childView); });
    if (j >= 0) { center(cur.items[j], Math.max(s, READ)); mark(j); }
  }
  function mark(j) {
    if (hit) hit.classList.remove("hit");
    hit = vp.querySelector('.n[data-i="' + j + '"]');
    if (hit) hit.classList.add("hit");
  }
  function itemOf(k) { return cur ? cur.items.findIndex(function (it) { return it.kind === OP && it.ref === k; }) : -1; }
  function jump(k) {  // show node k centred: here if drawn here (a box expanded in place), else in its own view
    var j = itemOf(k);
    if (j < 0) { go(views[leaf[k]], true); j = itemOf(k); }
    center(cur.items[j], Math.max(1, READ));
    mark(j);
  }

  // ---- groups: highlight, pin, their own view
  function show(g) {
    vp.querySelectorAll(".on").forEach(function (el) { el.classList.remove("on"); });
    svg.classList.toggle("focus", g !== null && g !== undefined);
    if (g !== null && g !== undefined) (byGroup[g] || []).forEach(function (el) { el.classList.add("on"); });
    rows.forEach(function (r) { r.classList.toggle("on", r.getAttribute("data-gid") === String(g)); });
  }
  function pin(g) { pinned = g; show(g); }
  function firstNodeOf(g) {
    var best = -1;
    for (var k = 0; k < nodes.length; k++) {
      if (groupsOfStripes(nodes[k][3]).indexOf(g) >= 0) return k;
      if (best < 0 && nodes[k][4].indexOf(g) >= 0) best = k;
    }
    return best;
  }
  function revealGroup(g) {
    var here = (byGroup[g] || []).filter(function (el) { return el.classList.contains("op"); });
    if (here.length) { center(cur.items[+here[0].getAttribute("data-i")]); return; }  // its nodes are drawn here
    var k = firstNodeOf(g);
    if (k >= 0) { jump(k); show(g); }
  }
  function showGroupView(g) {
    var sel = {}, n = 0;
    nodes.forEach(function (nd, k) { if (nd[4].indexOf(g) >= 0) { sel[k] = 1; n++; } });
    Object.keys(sel).forEach(function (k) {
      insOf[k].forEach(function (t) { if (tensors[t][4] >= 0) sel[tensors[t][4]] = 1; });
      outsOf[k].forEach(function (t) { tensors[t][5].forEach(function (r) { if (r >= 0) sel[r] = 1; }); });
    });
    var ks = Object.keys(sel).map(Number).sort(function (a, b) { return a - b; }).slice(0, 600);
    var at = {}, items = ks.map(function (k, i) {
      at[k] = i;
      var nd = nodes[k], gs = groupsOfStripes(nd[3]);
      var w = Math.max(44, Math.round(6.6 * short(nd[1], 22).length + (nd[2] ? 5.8 * (nd[2].length + 1) : 0) +
        (gs.length === 1 ? 5.8 * (String(gs[0]).length + 2) : 0)) + 16);
      return {kind: OP, ref: k, layer: 0, w: w, x: 0};
    });
    var routes = [];
    ks.forEach(function (k) {
      outsOf[k].forEach(function (t) {
        var dsts = tensors[t][5].filter(function (r) { return r >= 0 && at[r] !== undefined; }).map(function (r) { return at[r]; });
        dsts.forEach(function (d) { items[d].layer = Math.max(items[d].layer, items[at[k]].layer + 1); });
        if (dsts.length) routes.push([t, at[k], dsts, []]);
      });
    });
    var rowsAt = {}, W = 0, L = 0;
    items.forEach(function (it) {
      var x = rowsAt[it.layer] || M;
      it.x = x + it.w / 2; rowsAt[it.layer] = x + it.w + 14;
      W = Math.max(W, rowsAt[it.layer]); L = Math.max(L, it.layer);
    });
    var back = cur.id >= 0 ? cur.id : cur.back;
    var what = ks.length < Object.keys(sel).length ? " (the first " + ks.length + " drawn)" : "";
    groupView = {id: -1, back: back, l: "group #" + g + ": " + n + " nodes and their neighbours" + what, w: W + M, h: top(L) + BH + M,
                 items: items, routes: routes};
    pinned = g;
    go(groupView);
  }

  svg.addEventListener("click", function (ev) {
    if (moved) { moved = false; return; }
    var xo = ev.target.closest(".xo");
    if (xo) { go(views[+xo.getAttribute("data-o")]); return; }
    var el = ev.target.closest(".n,.e,.xf");
    if (!el) { pin(null); return; }
    if (el.classList.contains("xf")) { expand(+el.getAttribute("data-f"), false); return; }
    if (el.classList.contains("blk")) {
      var ref = cur.items[+el.getAttribute("data-i")].ref;
      if (ev.shiftKey) go(views[ref]); else expand(ref, true);
      return;
    }
    if (el.classList.contains("port")) {
      var t = cur.items[+el.getAttribute("data-i")].ref, tk = tensors[t];
      var k = el.parentNode && cur.items[+el.getAttribute("data-i")].kind === PIN ? tk[4] : tk[5].filter(function (r) { return r >= 0 && !inView(r); })[0];
      if (k !== undefined && k >= 0) jump(k);
      return;
    }
    var gs = el.classList.contains("e") ? tensors[cur.routes[+el.getAttribute("data-e")][0]][3] : groupsOf(cur, cur.items[+el.getAttribute("data-i")]);
    if (!gs.length) return;
    pin(gs[(gs.indexOf(pinned) + 1) % gs.length]);
    var row = document.getElementById("g" + pinned);
    if (row) row.scrollIntoView({block: "nearest"});
  });
  function inBox(it, v) { var w = it.kind === OP ? leaf[it.ref] : -1; while (w >= 0) { if (w === v) return true; w = views[w].p; } return false; }
  function inView(k) { var v = leaf[k]; while (v >= 0) { if (v === cur.id) return true; v = views[v].p; } return false; }

  rows.forEach(function (r) {
    var g = +r.getAttribute("data-gid");
    r.addEventListener("mouseenter", function () { show(g); });
    r.addEventListener("mouseleave", function () { show(pinned); });
    r.addEventListener("click", function (ev) {
      if (ev.target.closest("summary")) return;
      if (ev.target.closest("button.gv")) { showGroupView(g); return; }
      pin(pinned === g ? null : g);
      if (pinned !== null) revealGroup(g);
    });
  });

  // ---- search by node, tensor or weight name
  var find = document.getElementById("find"), found = document.getElementById("found"), matches = [], mi = -1, lastQ = null;
  function search(q) {
    q = q.toLowerCase();
    var exact = [], part = [], seen = {};
    function add(k, name) {
      if (k < 0 || seen[k]) return;
      var l = name.toLowerCase();
      if (l === q) { exact.push(k); seen[k] = 1; } else if (l.indexOf(q) >= 0) { part.push(k); seen[k] = 1; }
    }
    nodes.forEach(function (nd, k) { add(k, nd[0]); });
    tensors.forEach(function (t, i) { add(t[4] >= 0 ? t[4] : t[5].filter(function (r) { return r >= 0; })[0], tname(i)); });
    D.consts.forEach(function (c) { add(c[1], c[0]); });
    return exact.concat(part);
  }
  find.addEventListener("keydown", function (ev) {
    if (ev.key !== "Enter") return;
    var q = find.value.trim();
    if (!q) return;
    if (q !== lastQ) { matches = search(q); mi = -1; lastQ = q; }
    if (!matches.length) { found.textContent = "no match"; return; }
    mi = (mi + 1) % matches.length;
    found.textContent = (mi + 1) + "/" + matches.length;
    jump(matches[mi]);
  });

  // ---- the table: filter, sort, folded parameter groups
  var q = document.getElementById("q"), st = document.getElementById("st"), triv = document.getElementById("trivial");
  var table = document.querySelector("table.groups"), tbody = table.tBodies[0];
  function filter() {
    var t = q.value.toLowerCase(), s2 = st.value;
    rows.forEach(function (r) {
      var ok = (!t || r.textContent.toLowerCase().indexOf(t) >= 0) && (s2 === "all" || r.classList.contains(s2));
      r.style.display = ok ? "" : "none";
    });
  }
  q.addEventListener("input", filter); st.addEventListener("change", filter);
  triv.addEventListener("change", function () { table.classList.toggle("showtriv", triv.checked); });
  var sortKey = null, sortDir = 1;
  table.querySelectorAll("th[data-sort]").forEach(function (th) {
    th.addEventListener("click", function () {
      var key = th.getAttribute("data-sort"), num = th.hasAttribute("data-num");
      sortDir = sortKey === key ? -sortDir : (num ? -1 : 1); sortKey = key;
      table.querySelectorAll("th").forEach(function (h) { h.classList.remove("asc", "desc"); });
      th.classList.add(sortDir > 0 ? "asc" : "desc");
      function val(r) { return key === "id" ? +r.getAttribute("data-gid") : (num ? +r.getAttribute("data-" + key) : r.getAttribute("data-" + key) || "\uffff"); }
      var owners = rows.filter(function (r) { return !r.hasAttribute("data-owner"); });
      owners.sort(function (a, b) { var x = val(a), y = val(b); return (x < y ? -1 : x > y ? 1 : +a.getAttribute("data-gid") - +b.getAttribute("data-gid")) * (x === y ? 1 : sortDir); });
      var under = {};
      rows.forEach(function (r) { var o = r.getAttribute("data-owner"); if (o !== null) (under[o] = under[o] || []).push(r); });
      var frag = document.createDocumentFragment();
      owners.forEach(function (r) { frag.appendChild(r); (under[r.getAttribute("data-gid")] || []).forEach(function (c) { frag.appendChild(c); }); });
      rows.forEach(function (r) { if (!r.parentNode || r.parentNode !== frag) frag.appendChild(r); });
      tbody.appendChild(frag);
    });
  });
  (function foldUnderOwners() {  // folded rows sit right after their owner
    var under = {};
    rows.forEach(function (r) { var o = r.getAttribute("data-owner"); if (o !== null) (under[o] = under[o] || []).push(r); });
    Object.keys(under).forEach(function (o) {
      var owner = document.getElementById("g" + o), after = owner;
      if (!owner) return;
      under[o].forEach(function (r) { after.parentNode.insertBefore(r, after.nextSibling); after = r; });
    });
  })();

  go(views[0]);
  window.graphprune = {views: views, go: function (id) { go(views[id]); }, expand: function (id, on) { expand(id, on !== false); },
                       current: function () { return cur; }, frame: function (ref) {  // its frame's top, centred across
                         var f = (cur.frames || []).filter(function (f) { return f.ref === ref; })[0];
                         if (!f) return;
                         s = Math.max(s, 1); tx = box.clientWidth / 2 - (f.x0 + f.x1) / 2 * s; ty = 30 - (top(f.l0) - LH) * s; apply();
                       }, jump: jump, pin: function (g) { pin(g); revealGroup(g); },
                       groupView: showGroupView, state: function () { return {view: cur.id, s: s, tx: tx, ty: ty, pinned: pinned}; }};
  document.documentElement.setAttribute("data-ready", "1");
})();
