// keepa-fleet dashboard: the charts (uPlot, shipped beside this file), the live fleet panel
// and the "new deals" notice. Every value from the server goes into the page as text
// (textContent), never as HTML.
"use strict";

(function () {
  function $(id) { return document.getElementById(id); }
  function jsonData(id) {
    const el = $(id);
    return el ? JSON.parse(el.textContent) : null;
  }
  function text(el, value) { if (el) el.textContent = value == null ? "-" : String(value); }
  function fmt(n, digits) {
    if (n == null || typeof n !== "number") return "-";
    return n.toLocaleString(undefined, { maximumFractionDigits: digits || 0 });
  }
  function secs(s) { return typeof s === "number" ? s.toFixed(1) + " s" : "-"; }
  function width(el) { return Math.max(320, (el.clientWidth || 800) - 10); }

  // --- a deal's price history ----------------------------------------------------------
  function priceChart() {
    const el = $("price-chart");
    const data = jsonData("chart-data");
    if (!el || !data || !data.x.length) return;
    const scale = Math.pow(10, data.decimals);
    const money = new Intl.NumberFormat(undefined, { style: "currency", currency: data.currency });
    const colors = ["#e67e22", "#2471a3", "#7d3c98", "#27ae60"];
    const series = [{}].concat(data.series.map(function (s, i) {
      return {
        label: s.label, stroke: colors[i % colors.length], width: 2,
        value: function (u, v) { return v == null ? "-" : money.format(v); },
      };
    }));
    const values = [data.x].concat(data.series.map(function (s) {
      return s.values.map(function (v) { return v == null ? null : v / scale; });
    }));
    new uPlot({
      width: width(el), height: 320, series: series,
      axes: [{}, { values: function (u, ticks) { return ticks.map(function (t) { return money.format(t); }); }, size: 80 }],
    }, values, el);
    el.dataset.drawn = "1";
  }

  // --- why not: rejections by reason over time ------------------------------------------
  function reasonsChart() {
    const el = $("reasons-chart");
    const data = jsonData("reasons-data");
    if (!el || !data || !data.x.length) return;
    const colors = ["#c0392b", "#2471a3", "#27ae60", "#8e44ad", "#d68910", "#17a589", "#566573"];
    new uPlot({
      width: width(el), height: 260, axes: [{}, { size: 60 }],
      series: [{}].concat(data.series.map(function (s, i) {
        return { label: s.label, stroke: colors[i % colors.length], width: 2, points: { show: true } };
      })),
    }, [data.x].concat(data.series.map(function (s) { return s.values; })), el);
    el.dataset.drawn = "1";
  }

  // --- new deals while the page is open ---------------------------------------------------
  function watchNewDeals() {
    const box = $("new-live");
    const anchor = $("new-deals");
    if (!box || !anchor) return;
    const since = anchor.dataset.since;
    function poll() {
      fetch("/api/new?since=" + encodeURIComponent(since), { cache: "no-store" })
        .then(function (r) { return r.ok ? r.json() : null; })
        .then(function (j) {
          if (j && j.new > 0) {
            box.hidden = false;
            box.textContent = "";
            box.append(j.new + " new deals since this page loaded. ");
            const a = document.createElement("a");
            a.href = window.location.pathname + window.location.search;
            a.id = "reload";
            a.textContent = "Show them";
            box.append(a);
          }
        })
        .catch(function () {})
        .finally(function () { setTimeout(poll, 2000); });
    }
    setTimeout(poll, 2000);
  }

  // --- the fleet panel --------------------------------------------------------------------
  let tokensPlot = null;

  function row(cells) {
    const tr = document.createElement("tr");
    cells.forEach(function (c) {
      const td = document.createElement("td");
      if (c instanceof Node) td.append(c); else td.textContent = c == null ? "" : String(c);
      tr.append(td);
    });
    return tr;
  }

  function actionButtons(worker) {
    const span = document.createElement("span");
    ["drain", "restart", "kill"].forEach(function (action) {
      const b = document.createElement("button");
      b.textContent = action;
      b.dataset.action = action;
      b.addEventListener("click", function () {
        const token = ($("action-token") || {}).value || "";
        fetch("/api/actions/" + action, {
          method: "POST",
          headers: { "Content-Type": "application/json", "Authorization": "Bearer " + token },
          body: JSON.stringify({ worker: worker }),
        }).then(function (r) { return r.json(); })
          .then(function (j) { text($("action-result"), j.message || j.error); })
          .catch(function (e) { text($("action-result"), String(e)); });
      });
      span.append(b, " ");
    });
    return span;
  }

  function drawTokens(history) {
    const el = $("tokens-chart");
    if (!el || !history.length) return;
    const keys = ["now", "available", "in_flight", "soft_floor"];
    const data = [history.map(function (h) { return h.at; })].concat(
      keys.map(function (k) { return history.map(function (h) { return h[k]; }); }));
    if (!tokensPlot) {
      tokensPlot = new uPlot({
        width: width(el), height: 260, axes: [{}, { size: 70 }],
        series: [{},
          { label: "balance", stroke: "#2471a3", width: 2 },
          { label: "available", stroke: "#27ae60", width: 2 },
          { label: "in flight", stroke: "#d68910", width: 2 },
          { label: "soft floor", stroke: "#c0392b", dash: [6, 4] }],
      }, data, el);
    } else {
      tokensPlot.setData(data);
    }
    el.dataset.drawn = "1";
  }

  function showFleet(view) {
    const live = $("fleet-live");
    const state = view.state;
    if (!view.answered || !state) {
      text(live, "broker not answering");
      live.className = "badge down";
    } else {
      text(live, "live · snapshot " + secs(view.answered_age_s) + " old");
      live.className = "badge up";
    }
    document.body.dataset.fleetPolls = String(view.polls || 0);
    const problems = $("problems");
    problems.textContent = "";
    (view.problems || []).forEach(function (p) {
      const li = document.createElement("li"); li.textContent = p; problems.append(li);
    });
    if (!problems.children.length) {
      const li = document.createElement("li"); li.className = "ok"; li.textContent = "no health problems";
      problems.append(li);
    }
    drawTokens(view.history || []);
    if (!state) return;
    const t = state.tokens || {};
    text($("tokens-now"), fmt(t.now));
    $("tokens-now").dataset.value = t.now == null ? "" : String(t.now);
    text($("tokens-cap"), "of " + fmt(t.cap));
    text($("tokens-available"), fmt(t.available));
    text($("tokens-in-flight"), fmt(t.in_flight));
    text($("tokens-refill"), fmt(t.refill_rate) + " / step");
    text($("tokens-next"), "next step in " + secs(typeof t.refill_in_ms === "number" ? t.refill_in_ms / 1000 : null)
      + (t.refill_period_s ? " (every " + t.refill_period_s + " s)" : ""));
    text($("tokens-floor"), fmt(t.soft_floor));
    text($("tokens-mode"), t.recharge_mode ? "RECHARGE: grants paused" : "granting");
    text($("tokens-unaccounted"), fmt(t.unaccounted));
    text($("tokens-spent"), "spent " + fmt(t.spent) + " (workers " + fmt(t.spent_workers) + ", clients " + fmt(t.spent_clients) + ")");
    const p = state.permits || {};
    text($("permits"), "queued " + fmt(p.queued) + " · oldest wait " + secs(p.oldest_wait_s)
      + " · head wait " + secs(p.head_wait_s) + " · mean wait " + secs(p.mean_wait_s)
      + " · granted " + fmt(p.granted) + " · settled " + fmt(p.settled) + " · in flight " + fmt(p.in_flight)
      + " · expired " + fmt(p.expired) + " · rejected " + fmt(p.rejected));
    const wbody = document.querySelector("#workers tbody");
    wbody.textContent = "";
    (state.workers || []).forEach(function (w) {
      const cells = [w.id, String(w.state || "").toUpperCase(), secs(w.heartbeat_age_s), w.stage,
        w.progress, w.items_done, w.permits_held, w.queued, w.tokens_spent];
      if (view.actions_enabled) cells.push(actionButtons(w.id));
      const tr = row(cells);
      tr.className = "worker";
      tr.dataset.worker = w.id;
      wbody.append(tr);
    });
    if (!wbody.children.length) wbody.append(row(["none registered"]));
    const kbody = document.querySelector("#kills tbody");
    kbody.textContent = "";
    (state.kills || []).slice().reverse().forEach(function (k) {
      kbody.append(row([k.worker, k.reason, k.action, k.outcome, secs(k.age_s)]));
    });
    if (!kbody.children.length) kbody.append(row(["no kills"]));
  }

  function pollFleet() {
    fetch("/api/fleet", { cache: "no-store" })
      .then(function (r) { return r.json(); })
      .then(showFleet)
      .catch(function () { text($("fleet-live"), "dashboard not answering"); })
      .finally(function () { setTimeout(pollFleet, 1000); });
  }

  document.addEventListener("DOMContentLoaded", function () {
    const page = document.body.dataset.page;
    if (page === "deal") priceChart();
    if (page === "whynot") reasonsChart();
    if (page === "deals") watchNewDeals();
    if (page === "fleet") pollFleet();
  });
})();
