"""Word lists the false-hit guard uses (English and Chinese).

Kept small and general on purpose: they describe the language, not the
labelled pair set. Additions belong here, with the case that needed them.
"""

from __future__ import annotations

# Words that negate what follows. English contractions are expanded first ("don't" -> "do not").
NEGATION_EN = frozenset(
    "not no never cannot without nothing nobody none neither nor nowhere hardly barely".split()
)
# Prefixes that negate a word when the bare word appears on the other side ("unclear" vs "clear").
NEGATION_PREFIXES_EN = ("un", "in", "im", "ir", "il", "dis", "non")
# A Chinese word that starts with one of these negates, unless it is a listed exception.
NEGATION_ZH = ("不", "没", "無", "无", "未", "非", "别", "別", "莫", "勿", "甭", "休想", "禁止")
NEGATION_ZH_EXCEPTIONS = frozenset(
    "不错 不過 不过 不断 不少 不久 不仅 不但 不管 不如 不然 不论 非常 非凡 无论 無論 未来 未來 别人 別人 别的 "
    "无聊 無聊 不得不 没错 没關係 没关系 莫非 无数 不止 不禁 不免 未必".split()
)

# Antonym pairs; each is checked both ways. Chinese entries match as substrings.
ANTONYMS_EN: tuple[tuple[str, str], ...] = (
    ("on", "off"), ("open", "close"), ("opened", "closed"), ("clean", "dirty"), ("fast", "slow"),
    ("quick", "slow"), ("delicious", "disgusting"), ("tasty", "bland"), ("cheap", "expensive"),
    ("bright", "dim"), ("bright", "dark"), ("hot", "cold"), ("warm", "cold"), ("heavy", "light"),
    ("polite", "rude"), ("friendly", "rude"), ("close", "far"), ("near", "far"), ("increase", "decrease"),
    ("raise", "lower"), ("best", "worst"), ("better", "worse"), ("good", "bad"), ("great", "terrible"),
    ("easy", "hard"), ("easy", "difficult"), ("big", "small"), ("large", "small"), ("up", "down"),
    ("happy", "sad"), ("wide", "narrow"), ("early", "late"), ("enable", "disable"), ("high", "low"),
    ("love", "hate"), ("like", "dislike"), ("safe", "dangerous"), ("in", "out"), ("correct", "wrong"),
    ("right", "wrong"), ("true", "false"), ("win", "lose"), ("won", "lost"), ("buy", "sell"),
    ("start", "stop"), ("begin", "end"), ("add", "remove"), ("accept", "reject"), ("allow", "forbid"),
    ("success", "failure"), ("succeed", "fail"), ("strong", "weak"), ("long", "short"), ("tall", "short"),
    ("new", "old"), ("young", "old"), ("rich", "poor"), ("full", "empty"), ("thick", "thin"),
    ("loud", "quiet"), ("before", "after"), ("above", "below"), ("first", "last"), ("max", "min"),
    ("maximum", "minimum"), ("more", "less"), ("more", "fewer"), ("most", "least"), ("left", "right"),
    ("north", "south"), ("east", "west"), ("import", "export"), ("upload", "download"), ("push", "pull"),
    ("positive", "negative"), ("pass", "fail"), ("agree", "disagree"), ("support", "oppose"),
    ("include", "exclude"), ("encrypt", "decrypt"), ("compress", "decompress"), ("lock", "unlock"),
    ("connect", "disconnect"), ("install", "uninstall"), ("show", "hide"), ("arrive", "depart"),
    ("wet", "dry"), ("soft", "hard"), ("sweet", "bitter"), ("love", "hated"), ("loved", "hated"),
)
ANTONYMS_ZH: tuple[tuple[str, str], ...] = (
    ("打开", "关闭"), ("开启", "关闭"), ("开", "关"), ("干净", "脏"), ("快", "慢"), ("好吃", "难吃"),
    ("好喝", "难喝"), ("好看", "难看"), ("好听", "难听"), ("好用", "难用"), ("便宜", "贵"), ("热", "冷"),
    ("重", "轻"), ("礼貌", "粗鲁"), ("热情", "冷淡"), ("近", "远"), ("高", "低"), ("增加", "减少"),
    ("提高", "降低"), ("上涨", "下跌"), ("涨", "跌"), ("最好", "最差"), ("最好", "最坏"), ("好", "坏"),
    ("好", "差"), ("容易", "难"), ("简单", "难"), ("简单", "复杂"), ("大", "小"), ("多", "少"),
    ("开心", "悲伤"), ("开心", "难过"), ("高兴", "难过"), ("快乐", "悲伤"), ("宽", "窄"), ("提前", "推迟"),
    ("提前", "延迟"), ("早", "晚"), ("喜欢", "讨厌"), ("爱", "恨"), ("安全", "危险"), ("对", "错"),
    ("正确", "错误"), ("真", "假"), ("赢", "输"), ("胜", "负"), ("买", "卖"), ("开始", "结束"),
    ("成功", "失败"), ("支持", "反对"), ("同意", "反对"), ("接受", "拒绝"), ("允许", "禁止"), ("强", "弱"),
    ("长", "短"), ("新", "旧"), ("胖", "瘦"), ("深", "浅"), ("亮", "暗"), ("满意", "失望"), ("优点", "缺点"),
    ("上", "下"), ("前", "后"), ("左", "右"), ("东", "西"), ("南", "北"), ("进", "出"), ("来", "去"),
    ("加", "减"), ("升", "降"), ("男", "女"), ("美", "丑"), ("甜", "苦"), ("厚", "薄"), ("硬", "软"),
    ("干", "湿"), ("富", "穷"), ("满", "空"), ("贵", "廉"), ("上传", "下载"), ("登录", "退出"),
    ("显示", "隐藏"), ("加密", "解密"), ("安装", "卸载"), ("连接", "断开"), ("放大", "缩小"),
    ("盈利", "亏损"), ("赚", "亏"), ("优秀", "糟糕"), ("精彩", "无聊"), ("积极", "消极"), ("乐观", "悲观"),
)

# English number words -> value ("a dozen" is left alone: rare, ambiguous).
NUMBER_WORDS_EN = {
    w: i
    for i, w in enumerate(
        "zero one two three four five six seven eight nine ten eleven twelve thirteen fourteen fifteen "
        "sixteen seventeen eighteen nineteen twenty".split()
    )
} | {"thirty": 30, "forty": 40, "fifty": 50, "sixty": 60, "seventy": 70, "eighty": 80, "ninety": 90,
     "hundred": 100, "thousand": 1000, "million": 1_000_000, "billion": 1_000_000_000,
     "first": 1, "second": 2, "third": 3, "half": 0.5, "double": 2, "twice": 2, "triple": 3}

ZH_DIGITS = {"零": 0, "〇": 0, "一": 1, "二": 2, "两": 2, "兩": 2, "三": 3, "四": 4, "五": 5, "六": 6,
             "七": 7, "八": 8, "九": 9, "半": 0.5}
ZH_UNITS = {"十": 10, "百": 100, "千": 1000, "万": 10_000, "萬": 10_000, "亿": 100_000_000, "億": 100_000_000}
# Words with a numeral that is not a quantity.
ZH_NUMBER_EXCEPTIONS = frozenset(
    "一下 一些 一点 一點 一起 一样 一樣 一直 一定 一般 一切 万一 萬一 统一 唯一 一会 一會 一边 之一 一旦 一向 "
    "一共 一味 一致 一再 一同 一律 一面 专一 第一 一口气 千万 万万 三心二意 一模一样 一般般 一路 十分 万分 百分之百".split()
)

# Proper-noun tags of jieba's part-of-speech dictionary: places, people, organisations, other names.
ZH_ENTITY_TAGS = frozenset({"ns", "nr", "nrt", "nrfg", "nt", "nz"})
# Common names the dictionary tags as plain nouns.
ZH_ENTITIES_EXTRA = frozenset("苹果公司 小米 苹果 故宫 微软 谷歌 亚马逊 特斯拉 三星 索尼 华为 百度 京东 淘宝 微信 抖音".split())

# Words that are capitalised in English text without being names.
EN_NOT_ENTITIES = frozenset(
    "i i'm i'd i'll i've ok okay mr mrs ms dr please hi hello hey thanks thank yes no".split()
)
