// Lens review page. Optional: the page works without it (plain forms,
// POST-redirect-GET). With JavaScript on, changing the status filter applies
// it at once, and a decision button shows the request is on its way.
'use strict';

document.addEventListener('DOMContentLoaded', () => {
  for (const select of document.querySelectorAll('select[data-autosubmit]')) {
    select.addEventListener('change', () => select.form.requestSubmit());
  }
  for (const form of document.querySelectorAll('form.decide')) {
    form.addEventListener('submit', () => {
      form.classList.add('busy');
      form.setAttribute('aria-busy', 'true');
    });
  }
});
