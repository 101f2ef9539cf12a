"""The small page at ``GET /``: type a topic, see the meme."""

INDEX_HTML = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>memesys</title>
<meta name="viewport" content="width=device-width, initial-scale=1">
<style>body{font-family:sans-serif;max-width:44rem;margin:2rem auto;padding:0 1rem}
input{font-size:1.1rem;padding:.4rem;width:70%}button{font-size:1.1rem;padding:.4rem 1rem}
img{max-width:100%;margin-top:1rem}pre{background:#f4f4f4;padding:.5rem;white-space:pre-wrap}</style>
</head><body><h1>memesys</h1>
<form id="f"><input id="topic" maxlength="200" placeholder="a topic, e.g. mondays" required>
<button>Make a meme</button></form><div id="out"></div>
<script>
document.getElementById('f').onsubmit = async (e) => {
  e.preventDefault();
  const out = document.getElementById('out');
  out.textContent = 'working...';
  const r = await fetch('/v1/memes', {method: 'POST', headers: {'Content-Type': 'application/json'},
    body: JSON.stringify({topic: document.getElementById('topic').value})});
  const body = await r.json();
  out.innerHTML = '';
  if (r.ok) { const img = document.createElement('img'); img.src = body.image_url;
    img.alt = body.top_text + ' / ' + body.bottom_text; out.appendChild(img); }
  const pre = document.createElement('pre'); pre.textContent = JSON.stringify(body, null, 2);
  out.appendChild(pre);
};
</script></body></html>
"""
