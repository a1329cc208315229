// Drives control's web view in real headless Chromium (playwright-core, the system browser).
//
// Usage: node browser_webview.cjs BASE_URL LOGIN_URL RUN_ID RECEIPTS_JSON SCREENSHOT_PNG
//   RECEIPTS_JSON: [{"id": "...", "decision": "allow|policy_denied|budget_exceeded", "throttled": bool}, ...]
// Env: CHROMIUM (path of the browser; default /usr/bin/chromium).
// Prints one JSON line of findings; exits non-zero with the failed expectation otherwise.
"use strict";

const { chromium } = require("playwright-core");

function expect(ok, what) {
  if (!ok) throw new Error("expected: " + what);
}

async function main() {
  const [base, loginUrl, run, receiptsJson, screenshotPath] = process.argv.slice(2);
  const receipts = JSON.parse(receiptsJson);
  const browser = await chromium.launch({
    executablePath: process.env.CHROMIUM || "/usr/bin/chromium",
    args: ["--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage"],
  });
  const findings = {};
  try {
    // Without a session: refused, with how to sign in; no receipt leaks.
    const anonymous = await browser.newContext();
    const anon = await anonymous.newPage();
    for (const path of ["/", "/runs/" + encodeURIComponent(run), "/demo"]) {
      const answer = await anon.goto(base + path);
      expect(answer.status() === 401, `an unauthenticated visit to ${path} is refused (got ${answer.status()})`);
      const text = await anon.textContent("body");
      expect(text.includes("fleetforge-ctl login"), `the refusal of ${path} says how to sign in`);
      expect(!text.includes(receipts[0].id), `the refusal of ${path} shows no receipt`);
    }
    await anonymous.close();

    // The one-time login URL opens a session and lands on the Hello Fleet run.
    const context = await browser.newContext({ viewport: { width: 1400, height: 1000 } });
    const page = await context.newPage();
    const errors = [];
    page.on("pageerror", (e) => errors.push(String(e)));
    page.on("console", (m) => m.type() === "error" && errors.push(m.text()));
    await page.goto(loginUrl);
    const cookies = await context.cookies();
    const session = cookies.find((c) => c.name === "fleetforge_session");
    expect(session && session.httpOnly, "an HttpOnly session cookie");
    findings.landed = new URL(page.url()).pathname;
    expect(findings.landed === "/runs/" + run, `the login lands on the demo run page (at ${findings.landed})`);

    // The runs list shows the run.
    await page.goto(base + "/");
    const listed = await page.locator(`#runs tr[data-run-id="${run}"]`).count();
    expect(listed === 1, "the runs list shows the demo run");
    await page.click(`#runs tr[data-run-id="${run}"] a`);
    await page.waitForSelector("#timeline[data-ready=true]");

    // Every receipt of the run is in the timeline, with its decision.
    for (const r of receipts) {
      const row = page.locator(`#timeline tr[data-receipt-id="${r.id}"]`);
      expect((await row.count()) === 1, `receipt ${r.id} in the timeline`);
      const decision = await row.locator("td.decision").textContent();
      expect(decision.includes(r.decision), `receipt ${r.id} shows decision ${r.decision} (shows ${decision})`);
      if (r.decision === "policy_denied") {
        expect(decision.includes("delete_repo is denied"), `the denied call shows its reason (shows ${decision})`);
        findings.denied_reason = decision.trim();
      }
      if (r.decision === "budget_exceeded") {
        expect(decision.includes("calls its budget allows"), `the refused call shows its reason (shows ${decision})`);
      }
      if (r.throttled) {
        expect(/waited \d+ ms for the run's rate SLO/.test(decision), `the throttled call shows its wait (shows ${decision})`);
        findings.throttled_reason = decision.trim();
      }
    }
    findings.rows = await page.locator("#timeline tr[data-receipt-id]").count();
    expect(findings.rows === receipts.length, `exactly the run's ${receipts.length} receipts (got ${findings.rows})`);
    expect((await page.getAttribute("#verification", "data-ok")) === "true", "the run shows as verified");
    findings.log_included = Number(await page.getAttribute("#log", "data-included"));
    expect(findings.log_included === receipts.length, `every receipt shows as a leaf of the transparency log (${findings.log_included})`);

    // The burn-down chart rendered: a series with points, drawn with a size.
    const chart = page.locator("svg#burn-down");
    const box = await chart.boundingBox();
    expect(box && box.width > 100 && box.height > 50, "the chart has a size");
    const points = await chart.locator("polyline.series").first().getAttribute("points");
    findings.chart_points = points.trim().split(/\s+/).length;
    expect(findings.chart_points >= 2 * receipts.length, "the chart has a point pair per receipt");

    // The script: a click on a row shows that signed receipt.
    await page.click(`#timeline tr[data-receipt-id="${receipts[0].id}"] td.decision`);
    const raw = page.locator("#timeline tr.raw pre");
    await raw.waitFor();
    await page.waitForFunction(() => !document.querySelector("#timeline tr.raw pre").textContent.startsWith("loading"));
    const rawText = await raw.textContent();
    expect(rawText.includes(receipts[0].id) && rawText.includes('"signature"'), "the raw signed receipt is shown");
    expect(errors.length === 0, "no script errors: " + errors.join("; "));

    // A screenshot, checked to be more than a blank page.
    const png = await page.screenshot({ path: screenshotPath, fullPage: true });
    const blank = await browser.newPage();
    findings.screenshot_colors = await blank.evaluate(async (b64) => {
      const img = new Image();
      img.src = "data:image/png;base64," + b64;
      await img.decode();
      const canvas = document.createElement("canvas");
      canvas.width = img.width;
      canvas.height = img.height;
      const ctx = canvas.getContext("2d");
      ctx.drawImage(img, 0, 0);
      const data = ctx.getImageData(0, 0, img.width, img.height).data;
      const colors = new Set();
      for (let i = 0; i < data.length; i += 4 * 7) colors.add((data[i] << 16) | (data[i + 1] << 8) | data[i + 2]);
      return colors.size;
    }, png.toString("base64"));
    expect(findings.screenshot_colors > 20, `the screenshot is not blank (${findings.screenshot_colors} colors)`);
    await context.close();
  } finally {
    await browser.close();
  }
  console.log(JSON.stringify(findings));
}

main().catch((e) => {
  console.error(String(e && e.stack ? e.stack : e));
  process.exit(1);
});
