import assert from "node:assert/strict";
import { after, test } from "node:test";
import { install, makeWindow } from "./dom.js";
import { classify, formName, putCid, readForm } from "../../src/forms.js";

const win = install(makeWindow("https://shop.example.com/contacts"));
const d = win.document;
after(() => win.happyDOM.close());

const form = (html, attrs = "") => {
  d.body.innerHTML = `<form ${attrs}>${html}</form>`;
  return d.querySelector("form");
};
const input = (html) => form(html).querySelector("input");

// A field whose value must never be read: reading it fails the test.
const guard = (el) => {
  Object.defineProperty(el, "value", {
    get() {
      throw new Error(`value of ${el.outerHTML} was read`);
    },
  });
  return el;
};

test("contact fields are found by type, name, autocomplete, placeholder", () => {
  const cases = [
    ['<input type="tel">', "phone"],
    ['<input name="phone">', "phone"],
    ['<input name="your-tel">', "phone"],
    ['<input name="form_tel">', "phone"],
    ['<input id="mobile">', "phone"],
    ['<input autocomplete="tel-national" name="f1">', "phone"],
    ['<input name="form_text_3" placeholder="Ваш телефон">', "phone"],
    ['<input type="email">', "email"],
    ['<input name="E-mail">', "email"],
    ['<input autocomplete="email" name="x">', "email"],
    ['<input name="name">', "name"],
    ['<input name="fio">', "name"],
    ['<input autocomplete="given-name" name="a">', "name"],
    ['<input placeholder="Ваше имя" name="f2">', "name"],
    ['<input name="hotel">', ""],
    ['<input name="username">', ""],
    ['<input name="company_name">', ""],
    ['<input name="comment">', ""],
    ['<input type="checkbox" name="phone">', ""],
    ['<input type="hidden" name="phone">', ""],
  ];
  for (const [html, want] of cases) assert.equal(classify(input(html)), want, html);
});

test("password and card fields are never classified, whatever they are called", () => {
  for (const html of [
    '<input type="password" name="phone">',
    '<input name="card_number" type="tel">',
    '<input autocomplete="cc-number" name="phone">',
    '<input name="cvv" type="tel">',
    '<input name="cvc">',
    '<input name="security_code" type="tel">',
    '<input name="passport" placeholder="phone">',
  ])
    assert.equal(classify(input(html)), "", html);
});

test("a lead form gives its contacts; other fields are not read", () => {
  const f = form(`<input name="name" value=" Anna "><input type="tel" name="phone" value="+7 (999) 123-45-67">
    <input type="email" value="a@b.ru"><input name="cc-number" autocomplete="cc-number">
    <input name="comment" value="call me"><input type="hidden" name="token" value="x">`);
  guard(f.querySelector("[autocomplete=cc-number]"));
  guard(f.querySelector("[name=comment]"));
  guard(f.querySelector("[name=token]"));
  assert.deepEqual(readForm(f), { name: "Anna", phone: "+7 (999) 123-45-67", email: "a@b.ru" });
  // The guard itself works: guarding a field that is read makes readForm throw.
  guard(f.querySelector("[name=phone]"));
  assert.throws(() => readForm(f), /was read/);
});

test("forms with a password are not leads and nothing in them is read", () => {
  const f = form('<input name="email" type="email"><input type="password" name="pw"><input name="phone">');
  f.querySelectorAll("input").forEach(guard);
  assert.equal(readForm(f), null);
});

test("card-like numbers are never taken, even from a phone field", () => {
  const f = form('<input name="phone" value="4111 1111 1111 1111"><input name="name" value="5500000000000004">');
  assert.equal(readForm(f), null);
  assert.deepEqual(readForm(form('<input name="phone" value="+998 90 123 45 67">')), { phone: "+998 90 123 45 67" });
});

test("forms without a phone or an e-mail are not leads", () => {
  assert.equal(readForm(form('<input name="q" value="shoes"><input name="name" value="Bob">')), null);
  assert.equal(readForm(form('<input name="phone" value="12">')), null);
});

test("form name: name, id, action, else empty", () => {
  assert.equal(formName(form("", 'name="callback" id="x"')), "callback");
  assert.equal(formName(form("", 'id="order"')), "order");
  assert.equal(formName(form("", 'action="/lead"')), "/lead");
  assert.equal(formName(form('<input name="name"><input name="id">')), "");
});

test("the hidden client-id input is added once and kept current", () => {
  const f = form('<input name="phone">');
  putCid(f, "cid-12345678");
  putCid(f, "cid-87654321");
  const hidden = f.querySelectorAll("input[name=skvoz_cid]");
  assert.equal(hidden.length, 1);
  assert.equal(hidden[0].type, "hidden");
  assert.equal(hidden[0].value, "cid-87654321");
  assert.equal(new win.FormData(f).get("skvoz_cid"), "cid-87654321");
});
