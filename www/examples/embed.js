// Shows what the element reports (kept out of the HTML: the page's CSP forbids inline scripts).
const out = document.getElementById('last');
const el = document.getElementById('detector');
el.addEventListener('anomaly-score', (ev) => {
  const { score, verdict, width, height } = ev.detail;
  out.textContent = `anomaly-score: ${score.toFixed(3)} (${verdict}), map ${width}×${height}`;
  document.body.dataset.score = String(score);
});
el.addEventListener('anomaly-error', (ev) => {
  out.textContent = `anomaly-error: ${ev.detail.message}`;
});
