"""The report's inline stylesheet and script (no network: everything the page needs travels inside the file).

The script moves token tooltips from `title` to a styled box, filters the token views by prompt id, and appends
`<div id="rig-ready">` with the number of plots and token views once it has run (the headless-browser test looks
for it).
"""

CSS = """
body{font:14px/1.45 system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:24px auto;max-width:1280px;color:#222;
padding:0 16px}
h1{margin:0 0 4px}h2{border-bottom:1px solid #ddd;padding-bottom:4px;margin-top:32px}h3{margin:18px 0 6px}
.meta{color:#666}nav{margin:12px 0}#filter{width:320px;padding:4px 8px}
table{border-collapse:collapse;margin:6px 0 12px;font-size:13px}
th,td{border:1px solid #ddd;padding:3px 8px;text-align:left;vertical-align:top;max-width:420px;overflow-wrap:anywhere}
th{background:#f5f5f5}table.summary td+td,table.matrix td+td{text-align:right;font-variant-numeric:tabular-nums}
table.manifest td:first-child{font-family:ui-monospace,monospace;font-size:12px}
.plots{display:flex;flex-wrap:wrap;gap:12px}.grid{display:flex;flex-wrap:wrap;gap:20px;align-items:flex-start}
svg.plot{background:#fff;border:1px solid #eee}svg .pt{font-size:13px;font-weight:600}
svg .tk{font-size:10px;fill:#555}svg .al{font-size:11px;fill:#333}svg .lg{font-size:11px}
.tokdiff{border:1px solid #e3e3e3;border-radius:4px;margin:10px 0;padding:6px 8px;background:#fcfcfc}
.sh{font-size:12px;color:#444;margin-bottom:4px}.row{display:flex;gap:8px;margin:2px 0}
.lab{flex:0 0 48px;font-size:11px;color:#888;text-align:right;padding-top:2px}.lab-a{color:#1f77b4}.lab-b{color:#d62728}
.toks{font-family:ui-monospace,SFMono-Regular,Menlo,monospace;font-size:12px;white-space:pre-wrap;word-break:break-all}
.tok{border-bottom:1px dotted #ccc;cursor:help}.tok:hover{background:#ffe9a8}.tok.sp{color:#7a3db8}
.tok.a{background:#eaf2fb}.tok.b{background:#fbeaea}.tok.div{background:#ffd84d;font-weight:700;outline:1px solid #c90}
.more{color:#999}.c-confident,.bad{color:#c62828;font-weight:600}.c-near_tie,.ok{color:#2e7d32;font-weight:600}
.c-prefix{color:#6a1b9a}
#tip{position:absolute;z-index:10;background:#222;color:#fff;font:12px/1.4 ui-monospace,monospace;padding:6px 8px;
border-radius:4px;white-space:pre-wrap;max-width:720px;pointer-events:none}
#rig-ready{color:#999;font-size:11px;margin-top:24px}
"""

JS = """
(function () {
  var tip = document.getElementById('tip');
  var toks = document.querySelectorAll('.tok[title]');
  for (var i = 0; i < toks.length; i++) {
    toks[i].setAttribute('data-tip', toks[i].getAttribute('title'));
    toks[i].removeAttribute('title');
  }
  document.addEventListener('mouseover', function (e) {
    var t = e.target && e.target.closest ? e.target.closest('.tok') : null;
    if (!t || !t.getAttribute('data-tip')) { tip.hidden = true; return; }
    tip.textContent = t.getAttribute('data-tip');
    var r = t.getBoundingClientRect();
    tip.style.left = (window.scrollX + r.left) + 'px';
    tip.style.top = (window.scrollY + r.bottom + 4) + 'px';
    tip.hidden = false;
  });
  var f = document.getElementById('filter');
  if (f) {
    f.addEventListener('input', function () {
      var q = f.value.toLowerCase(), views = document.querySelectorAll('.tokdiff');
      for (var i = 0; i < views.length; i++) {
        var id = (views[i].getAttribute('data-prompt') || '').toLowerCase();
        views[i].style.display = id.indexOf(q) >= 0 ? '' : 'none';
      }
    });
  }
  var ready = document.createElement('div');
  ready.id = 'rig-ready';
  ready.setAttribute('data-plots', document.querySelectorAll('svg.plot').length);
  ready.setAttribute('data-diffs', document.querySelectorAll('.tokdiff').length);
  ready.textContent = 'report ready: ' + ready.getAttribute('data-plots') + ' plots, ' +
    ready.getAttribute('data-diffs') + ' token views';
  document.body.appendChild(ready);
})();
"""
