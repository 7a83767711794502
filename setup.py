"""Standard nbdev setup reading settings.ini, plus the experiment notebooks shipped as package data."""
from configparser import ConfigParser
import setuptools

cfg = ConfigParser(delimiters=['='])
cfg.read('settings.ini', encoding='utf-8')
cfg = cfg['DEFAULT']

licenses = {'apache2': ('Apache Software License 2.0', 'OSI Approved :: Apache Software License')}
lic = licenses[cfg['license']]
statuses = ['1 - Planning', '2 - Pre-Alpha', '3 - Alpha', '4 - Beta', '5 - Production/Stable', '6 - Mature', '7 - Inactive']
requirements = cfg.get('requirements', '').split()
dev_requirements = cfg.get('dev_requirements', '').split()
faces_requirements = cfg.get('faces_requirements', '').split()
min_python = cfg['min_python']

setuptools.setup(
    name=cfg['lib_name'],
    version=cfg['version'],
    description=cfg['description'],
    license=lic[0],
    classifiers=['Development Status :: ' + statuses[int(cfg['status'])],
                 'Intended Audience :: Science/Research',
                 'License :: ' + lic[1],
                 'Natural Language :: English',
                 f'Programming Language :: Python :: {min_python}'],
    url=cfg['git_url'],
    # `disentangle.experiments` is the folder nbs/experiments: the papermill notebooks ship with the package.
    packages=['disentangle', 'disentangle.experiments'],
    package_dir={'disentangle': cfg['lib_path'], 'disentangle.experiments': 'nbs/experiments'},
    package_data={'disentangle': ['assets/*', 'assets/zoo/*'], 'disentangle.experiments': ['*.ipynb']},
    include_package_data=True,
    install_requires=requirements,
    extras_require={'dev': dev_requirements, 'faces': faces_requirements},
    python_requires='>=' + min_python,
    long_description=open('README.md', encoding='utf-8').read(),
    long_description_content_type='text/markdown',
    zip_safe=False,
    entry_points={'console_scripts': cfg.get('console_scripts', '').split(),
                  'nbdev': [f"{cfg['lib_path']}={cfg['lib_path']}._modidx:d"]},
)
